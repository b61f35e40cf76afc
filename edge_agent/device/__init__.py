"""Device adapters at the edge of the appliance: GPIO (button, LEDs) and systemd.

Thin wrappers around gpiozero and systemd-python; every decision they act on is made
in ``edge_agent.core``.
"""
