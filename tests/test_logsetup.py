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


def test_journal_fields_never_carry_the_key() -> None:
    """The journal handler sends CODE_ARGS, EXCEPTION_TEXT and every record attribute as
    fields besides MESSAGE: all of them must be redacted, not only the formatted text."""
    from edge_agent.secrets import REDACTED, register_secret

    key = "journal-field-test-key-0123456789"
    register_secret(key)
    handler = make_handler("journal", {})
    sent: list[tuple[str, dict[str, object]]] = []

    def capture(text: str, /, **fields: object) -> None:  # the real send's signature
        sent.append((text, fields))

    handler.send = capture  # type: ignore[attr-defined]
    logger = logging.getLogger("edge_agent.test_journal_fields")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("connecting with %s", key)
        logger.info("header", extra={"HEADER": f"x-goog-api-key: {key}"})
        try:
            raise ConnectionError(f"wss://example/ws?key={key} refused")
        except ConnectionError:
            logger.exception("connect failed for %s", key)
    finally:
        logger.removeHandler(handler)
    assert len(sent) == 3
    for message, fields in sent:
        assert key not in message
        for name, value in fields.items():
            assert key not in str(value), name
    assert REDACTED in sent[0][0]
    assert "ConnectionError" in str(sent[2][1].get("EXCEPTION_TEXT"))
