"""The Content-Security-Policy header (django-csp), with a looser one for the admin.

The site's pages load scripts and styles from its own static files only, with no
inline script, handler or style attribute, so the policy in the settings
(``CONTENT_SECURITY_POLICY``) allows ``'self'`` and nothing inline. The admin is
Django's and django-rq's, whose pages carry inline style blocks, so under
``/admin/`` the directives of ``CONTENT_SECURITY_POLICY_ADMIN`` replace the
site's (django-csp's documented way to extend its middleware:
:meth:`get_policy_parts`); the settings say why its scripts stay ``'self'``.
"""

from __future__ import annotations

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

ADMIN_PREFIX = "/admin/"


class SiteCSPMiddleware(CSPMiddleware):
    """django-csp's middleware; under :data:`ADMIN_PREFIX`, the admin's directives
    replace the site's (unless the view chose its own with ``csp_replace``)."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if not report_only and parts.replace is None and request.path.startswith(ADMIN_PREFIX):
            parts.replace = settings.CONTENT_SECURITY_POLICY_ADMIN
        return parts
