"""Where log lines go: the journal under systemd, stderr otherwise; always redacted."""

from __future__ import annotations

import logging

from systemd.journal import JournalHandler

from edge_agent.logsetup import RedactingFormatter, make_handler, under_systemd


def test_journal_under_systemd_and_stderr_otherwise() -> None:
    assert under_systemd({"INVOCATION_ID": "abc"})
    assert under_systemd({"JOURNAL_STREAM": "8:123"})
    assert not under_systemd({})
    journal = make_handler("auto", {"INVOCATION_ID": "abc"})
    assert isinstance(journal, JournalHandler)
    assert isinstance(journal.formatter, RedactingFormatter)
    plain = make_handler("auto", {})
    assert type(plain) is logging.StreamHandler
    assert isinstance(plain.formatter, RedactingFormatter)
    assert isinstance(make_handler("journal", {}), JournalHandler)
    assert type(make_handler("stderr", {"INVOCATION_ID": "x"})) is logging.StreamHandler
