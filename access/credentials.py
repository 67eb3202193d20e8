"""Credentials of the embedded default: one NATS user per service, each allowed only the
subjects it needs, and one Redis ACL user — generated once under ``run/`` (mode 0600)
and reused by every later run.

    creds = Credentials.load_or_create(Path("run"))
    creds.nats_config(port, store_dir)          # nats-server configuration text
    creds.nats_url("provisioner", port)         # nats://provisioner:…@127.0.0.1:port
    creds.redis_acl()                           # an ACL file for redis-server

A deployment with its own servers (NATS_URL / REDIS_URL) brings its own credentials;
deploy/ shows how. Users and their permissions come from the catalog of deployables
(``services.catalog``): one user per entry, allowed the subjects the entry names.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.catalog import CATALOG

__all__ = ["PERMISSIONS", "USERS", "Credentials"]

# Every client needs the JetStream API, inboxes (replies, consumer deliveries) and flow control.
_COMMON_PUB = ["$JS.API.>", "$JS.FC.>", "$JS.ACK.>", "_INBOX.>"]
_COMMON_SUB = ["_INBOX.>"]

# service → (may publish to, may subscribe to), from the catalog; replies go to inboxes, covered above.
PERMISSIONS: dict[str, tuple[list[str], list[str]]] = {d.name: (list(d.publish), list(d.subscribe)) for d in CATALOG}
# The launcher, `make rebuild` and tests: everything.
ADMIN = "admin"
USERS = (*PERMISSIONS, ADMIN)
REDIS_USER = "volplane"


def _quote(text: str) -> str:
    return json.dumps(text)


@dataclass(frozen=True)
class Credentials:
    nats: dict[str, str]  # user → password
    redis_password: str

    @classmethod
    def load_or_create(cls, run_dir: Path) -> Credentials:
        path = run_dir / "credentials.json"
        if path.exists():
            data = json.loads(path.read_text())
            if set(data.get("nats", {})) == set(USERS):
                return cls(nats=data["nats"], redis_password=data["redis"])
        creds = cls(nats={u: secrets.token_urlsafe(24) for u in USERS}, redis_password=secrets.token_urlsafe(24))
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"nats": creds.nats, "redis": creds.redis_password}, f)
        return creds

    def nats_url(self, user: str, port: int) -> str:
        return f"nats://{user}:{self.nats[user]}@127.0.0.1:{port}"

    def redis_url(self, port: int) -> str:
        return f"redis://{REDIS_USER}:{self.redis_password}@127.0.0.1:{port}/0"

    def nats_config(self, port: int, store_dir: Path) -> str:
        users = []
        for user, password in self.nats.items():
            if user == ADMIN:
                users.append(f"    {{ user: {_quote(user)}, password: {_quote(password)} }}")
                continue
            pub, sub = PERMISSIONS[user]
            users.append(
                f"    {{ user: {_quote(user)}, password: {_quote(password)}, permissions: {{ "
                f"publish: {json.dumps(_COMMON_PUB + pub)}, subscribe: {json.dumps(_COMMON_SUB + sub)} }} }}"
            )
        return (
            f"listen: 127.0.0.1:{port}\n"
            f"jetstream {{ store_dir: {_quote(str(store_dir))} }}\n"
            "authorization {\n  users: [\n" + ",\n".join(users) + "\n  ]\n}\n"
        )

    def redis_acl(self) -> str:
        """An ACL file: the default user is off; ours may do anything, on volplane's keys only."""
        return f"user default off\nuser {REDIS_USER} on >{self.redis_password} ~vp:* &* +@all\n"
