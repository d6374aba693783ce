"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Something the user can fix (a path, a flag, the data); the message says what to do."""

    exit_code = 2


class GateFailed(UserError):
    """A quality gate (rejection rate, anomalies, blessing, parity) stopped the run."""

    exit_code = 3
