"""The browser fixtures of tests/web/test_page.py, for the page tests in this folder."""

from tests.web.test_page import browser, open_page  # noqa: F401 (fixtures)
