"""The operator console (issue 16): a page served by every broker and the standalone on its
HTTP port, read-only unless ``--web-admin-actions``; see ``broker.console.app``."""

from __future__ import annotations

import asyncio

from broker.console.admin_calls import AdminCalls
from broker.console.app import Console
from broker.service import BrokerService
from strata.tls import channel_credentials

__all__ = ["Console", "start_console"]


def start_console(broker: BrokerService) -> Console | None:
    """The broker's console when ``--web-enabled``, started on the running loop; None when
    off. The caller serves it (``RoleMetrics`` or its own port) and closes it."""
    config = broker.config
    if not config.web_enabled:
        return None
    credentials = config.tls.client_credentials()
    if credentials is None and config.tls.tls_cert_file:
        # This broker serves TLS but calls others in plaintext: its own port still needs TLS,
        # trusting what its clients trust (the trust file, else the system's roots).
        credentials = channel_credentials(config.tls.tls_trust_certs_file)
    calls = AdminCalls(broker.advertised_address, credentials)
    return Console(
        broker,
        asyncio.get_running_loop(),
        calls,
        auth_required=config.auth.authentication_enabled,
        actions_enabled=config.web_admin_actions,
    ).start()
