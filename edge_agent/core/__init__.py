"""Pure decision logic: no I/O, time passed in as arguments."""
