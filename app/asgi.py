"""ASGI entry point for any server: ``uvicorn app.asgi:application`` or ``daphne app.asgi:application``.

Importing this module imports no Django: probes answer before Django is set up.
"""

from app.config import CONFIG
from app.process.router import create_application

application = create_application(CONFIG)
