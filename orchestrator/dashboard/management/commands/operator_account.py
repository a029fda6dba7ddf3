"""`python manage.py operator_account`: the first operator, created once (make run)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from orchestrator.dashboard.groups import groups_ensure
from orchestrator.dashboard.permissions import OPERATORS_GROUP


class Command(BaseCommand):
    help = (
        "Create the operator account if it does not exist yet (a superuser in the "
        "operators group, with a random password) and print its credentials once. Only "
        "the password's hash is stored; `manage.py changepassword` sets a new one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="operator")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        User = get_user_model()
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            if User.objects.filter(username=username).exists():
                self.stdout.write(
                    f"operator account: {username} (its password was printed when it was "
                    f"created; set a new one with: manage.py changepassword {username})"
                )
                return
            user = User.objects.create_superuser(username=username, password=password, email="")
            user.groups.add(groups_ensure()[OPERATORS_GROUP])
        self.stdout.write(
            self.style.SUCCESS(
                f"operator account created: username {username}  password {password}  "
                "(shown once; only its hash is stored)"
            )
        )
