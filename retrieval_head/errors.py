"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Something in the user's input is wrong; the message says what and how to fix it."""


class UnsupportedModelError(UserError):
    """The model's attention does not go through transformers' attention interface."""
