"""Every reply spamd itself gives an SMTP client, each chosen on purpose (see DESIGN.md's table).

Replies that come from the downstream (its 250, or its own 5xx for a recipient) are relayed
as the downstream gave them; these constants are the answers spamd makes up itself.
"""

from __future__ import annotations

# Accepting the envelope. With maildir: delivery there is no downstream to ask, so spamd answers.
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
DELIVERED = "250 2.0.0 Message accepted for delivery"
RESET_OK = "250 2.0.0 OK"

# The downstream is down, timed out or dropped the connection: the client keeps the message
# and retries later, so nothing is lost.
DOWNSTREAM_UNAVAILABLE = "451 4.4.1 Downstream mail server unavailable, try again later"

# maildir: delivery, and the disk (or the quota) is full: the client retries later, nothing is lost.
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage"

# [delivery] tls = "encrypt" or "verify", and the downstream offers no STARTTLS (misconfigured, or
# someone on the way strips it): the client keeps the message until the downstream does.
DOWNSTREAM_NO_TLS = "451 4.7.4 Downstream mail server offers no TLS, try again later"
# The TLS handshake with the downstream failed, or its certificate did not verify (tls = "verify").
DOWNSTREAM_TLS_FAILED = "451 4.7.5 TLS with the downstream mail server failed, try again later"

# A sender or recipient address in UTF-8 (SMTPUTF8) for a downstream that does not offer
# SMTPUTF8: as Postfix answers it, since such an address cannot be passed on in ASCII (RFC 6531).
# A refused recipient leaves the others of the transaction as they are.
DOWNSTREAM_NO_SMTPUTF8 = "553 5.6.7 Downstream mail server does not support SMTPUTF8"

# A message sent with SMTPUTF8 whose header block holds UTF-8, for a downstream that does not offer
# SMTPUTF8: refused at DATA's end (RFC 6531: such a message is never passed on to a server without
# SMTPUTF8), as Postfix's own SMTP client refuses it. X.6.9, with 550, is RFC 6531's code for a UTF-8
# header message that cannot be transferred, after DATA's final dot. Mail sent without SMTPUTF8
# goes on as it is, as in Postfix.
DOWNSTREAM_NO_SMTPUTF8_HEADERS = "550 5.6.9 UTF-8 headers, and the downstream mail server does not support SMTPUTF8"

# Scoring failed and [scoring] on_failure = "tempfail".
SCORING_TEMPFAIL = "451 4.3.0 Spam filter unavailable, try again later"

# An address with control characters in it (aiosmtpd already refuses a CR), or the null address as a
# recipient (RCPT TO:<>): Postfix's smtpd answers both so. Refused by spamd itself, so that nothing of
# the kind reaches a downstream or a Maildir's Return-Path and Delivered-To.
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"

# The score reached [scoring] reject_threshold.
REJECTED_SPAM = "550 5.7.1 Message refused as spam"

# Over [smtp] max_message_size: refused when SIZE= says so at MAIL, else without buffering the rest.
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"

# Over [smtp] max_recipients: the client sends the rest in another transaction.
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"

# The client kept spamd waiting for [smtp] idle_timeout without a byte: said before closing, as
# Postfix's smtpd says it, so the client's log tells a timeout from a dropped line.
IDLE_TIMEOUT = "421 4.4.2 Error: timeout exceeded"

# Over [smtp] max_connections: the MTA retries the connection later.
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"

# SIGTERM: no new transactions; the ones in flight finish first.
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"

# XFORWARD (spamd/smtp/xforward.py), as Postfix's smtpd answers it.
XFORWARD_OK = "250 2.0.0 Ok"
XFORWARD_REFUSED = "550 5.7.0 Error: insufficient authorization"  # a client outside [smtp] xforward_hosts
XFORWARD_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"
XFORWARD_SYNTAX = "501 5.5.4 Syntax: XFORWARD attribute=value..."
