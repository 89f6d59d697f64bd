"""``manage.py ensure_admin``: make sure a superuser exists, so a fresh install can be signed into.

Reads ``RIS_ADMIN_USER`` (default ``admin``), ``RIS_ADMIN_PASSWORD`` (default: a generated one, printed
once) and ``RIS_ADMIN_EMAIL``. Does nothing when any superuser already exists, so it is safe to run on
every start.
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction


class Command(BaseCommand):
    help = "Create the first superuser from RIS_ADMIN_USER / RIS_ADMIN_PASSWORD / RIS_ADMIN_EMAIL if none exists."

    def handle(self, *args: object, **options: object) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "Sign in as the admin made on the first start (forgot the password? "
                "python manage.py changepassword USER)."
            )
            return
        username = os.environ.get("RIS_ADMIN_USER", "admin").strip() or "admin"
        email = os.environ.get("RIS_ADMIN_EMAIL", "").strip()
        password = os.environ.get("RIS_ADMIN_PASSWORD", "")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        with transaction.atomic():
            if user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).exists():
                raise CommandError(
                    f"A user named {username!r} exists but is not a superuser; set RIS_ADMIN_USER to another name "
                    f"or run: python manage.py createsuperuser"
                )
            user_model.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(self.style.SUCCESS(f"Created the superuser {username!r}."))
        if generated:
            self.stdout.write(
                f"  Its password is: {password}\n"
                "  It is shown only this once. Change it with: python manage.py changepassword "
                f"{username}\n  (or set RIS_ADMIN_USER and RIS_ADMIN_PASSWORD before the first start)."
            )
        else:
            self.stdout.write("  Its password is the one in RIS_ADMIN_PASSWORD.")
