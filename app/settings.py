"""Django settings: a trimmed project with no database, no sessions, no admin.

Values come from app.config, the one place the environment is read.
"""

from __future__ import annotations

from app.config import CONFIG
from app.layers import channel_layers

SECRET_KEY = CONFIG.django_secret_key
DEBUG = CONFIG.debug
ALLOWED_HOSTS = list(CONFIG.allowed_hosts)

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.security.SecurityMiddleware"]
ROOT_URLCONF = "app.web.urls"
DATABASES: dict[str, dict[str, str]] = {}
TEMPLATES: list[dict[str, object]] = []

USE_I18N = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = channel_layers(CONFIG)

LOGGING_CONFIG = None
