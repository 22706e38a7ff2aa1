"""The protocol's legality rules, as data.

Both ends of a conversation (``connection.MilterConnection`` on the milter side,
``client.MtaConnection`` on the MTA side) consult these tables, and the tests iterate over
them. Invariant: data only; changing a rule means changing a row here.
"""

from __future__ import annotations

from listgate.milter.constants import ActionFlag, ProtocolFlag
from listgate.milter.messages import (
    Abort,
    Accept,
    AddHeader,
    AddRecipient,
    AddRecipientWithArgs,
    Body,
    ChangeHeader,
    ChangeSender,
    Command,
    Connect,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    EnvelopeFrom,
    EnvelopeRecipient,
    Header,
    Helo,
    InsertHeader,
    Macro,
    Quarantine,
    Quit,
    QuitNoClose,
    Reject,
    ReplaceBody,
    Reply,
    ReplyCode,
    Skip,
    TempFail,
    Unknown,
)

__all__ = [
    "EOM_MODIFICATIONS",
    "FINAL_REPLIES_FOR",
    "NEVER_ANSWERED",
    "PROGRESS_ALLOWED",
    "STEP_FLAGS",
]

STEP_FLAGS: dict[type[Command], tuple[ProtocolFlag, ProtocolFlag]] = {
    Connect: (ProtocolFlag.NOCONNECT, ProtocolFlag.NR_CONN),
    Helo: (ProtocolFlag.NOHELO, ProtocolFlag.NR_HELO),
    EnvelopeFrom: (ProtocolFlag.NOMAIL, ProtocolFlag.NR_MAIL),
    EnvelopeRecipient: (ProtocolFlag.NORCPT, ProtocolFlag.NR_RCPT),
    Data: (ProtocolFlag.NODATA, ProtocolFlag.NR_DATA),
    Header: (ProtocolFlag.NOHDRS, ProtocolFlag.NR_HDR),
    EndOfHeaders: (ProtocolFlag.NOEOH, ProtocolFlag.NR_EOH),
    Body: (ProtocolFlag.NOBODY, ProtocolFlag.NR_BODY),
    Unknown: (ProtocolFlag.NOUNKNOWN, ProtocolFlag.NR_UNKN),
    EndOfMessage: (ProtocolFlag.NONE, ProtocolFlag.NONE),
}
"""Each SMTP step → (flag that makes the MTA skip it, flag that makes it expect no reply).
EOM can be neither skipped nor left unanswered."""

NEVER_ANSWERED: frozenset[type[Command]] = frozenset({Abort, Macro, Quit, QuitNoClose})
"""Commands that never get a reply, whatever was negotiated. (OPTNEG is answered with
the negotiation reply, handled separately.)"""

_VERDICTS: frozenset[type[Reply]] = frozenset(
    {Accept, Continue, Reject, TempFail, Discard, ReplyCode}
)
_CONNECTION_VERDICTS: frozenset[type[Reply]] = frozenset(
    {Accept, Continue, Reject, TempFail, ReplyCode}
)

FINAL_REPLIES_FOR: dict[type[Command], frozenset[type[Reply]]] = {
    Connect: _CONNECTION_VERDICTS,  # DISCARD is a message verdict: Postfix warns at CONNECT
    Helo: _CONNECTION_VERDICTS,
    EnvelopeFrom: _VERDICTS,
    EnvelopeRecipient: _VERDICTS,
    Data: _VERDICTS,
    Header: _VERDICTS,
    EndOfHeaders: _VERDICTS,
    Body: _VERDICTS | {Skip},  # SKIP additionally needs SMFIP_SKIP agreed
    Unknown: _VERDICTS,
    EndOfMessage: _VERDICTS,
}
"""Command → the final replies that may answer it. SMFIR_CONN_FAIL and SMFIR_SHUTDOWN
appear nowhere: Sendmail handles neither, Postfix not CONN_FAIL."""

assert set(FINAL_REPLIES_FOR) == set(STEP_FLAGS)

EOM_MODIFICATIONS: dict[type[Reply], ActionFlag] = {
    AddHeader: ActionFlag.ADDHDRS,
    InsertHeader: ActionFlag.ADDHDRS,
    ChangeHeader: ActionFlag.CHGHDRS,
    AddRecipient: ActionFlag.ADDRCPT,
    DeleteRecipient: ActionFlag.DELRCPT,
    AddRecipientWithArgs: ActionFlag.ADDRCPT_PAR,
    ChangeSender: ActionFlag.CHGFROM,
    ReplaceBody: ActionFlag.CHGBODY,
    Quarantine: ActionFlag.QUARANTINE,
}
"""Modification replies (allowed before the final reply to EOM only) → the action flag
that must have been agreed for each."""

PROGRESS_ALLOWED: frozenset[type[Command]] = frozenset({EndOfMessage})
"""Where SMFIR_PROGRESS may be sent. Postfix takes it anywhere, Sendmail only at EOM."""
