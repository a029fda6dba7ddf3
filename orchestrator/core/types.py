"""Types shared by the services of core (and the layers above)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

# Who performed an operation: a user (an operator), or None for an agent or the system.
User = AbstractBaseUser | AnonymousUser | None
