"""The SMTP proxy: accept mail, score it, tag / reject / pass it on, and never lose a message."""
