"""Refusing to delete an Image that DPUs or DPUSets still use, naming them (DPF does this in a webhook).

The check runs inside the delete's transaction (a store delete guard), so no DPU can start
using the image between the check and the delete, whichever API or process deletes it.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, select

from ..api.errors import APIError
from ..store.schema import objects
from ..store.store import Store

MAX_NAMED = 10


class InUse(APIError):
    """The object is still referenced; details.users names who uses it."""

    code = 409
    reason = "InUse"


def image_users(conn: Connection, project: str, image: str) -> list[str]:
    """`kind/name` of every DPU and DPUSet in the project whose spec names the image."""
    needle = orjson.dumps(image).decode()
    rows = conn.execute(
        select(objects.c.kind, objects.c.name, objects.c.data).where(
            objects.c.kind.in_(["DPU", "DPUSet"]),
            objects.c.project == project,
            objects.c.data.contains(needle),  # a cheap filter; the exact check is below
        )
    ).all()
    users = []
    for kind, name, data in rows:
        spec = orjson.loads(data).get("spec") or {}
        used = spec.get("image") if kind == "DPU" else (spec.get("template") or {}).get("image")
        if used == image:
            users.append(f"{kind.lower()}/{name}")
    return sorted(users)


def _refuse_image_in_use(conn: Connection, image: dict[str, Any]) -> None:
    meta = image["metadata"]
    users = image_users(conn, meta["project"], meta["name"])
    if users:
        shown = ", ".join(users[:MAX_NAMED]) + (f" and {len(users) - MAX_NAMED} more" if len(users) > MAX_NAMED else "")
        raise InUse(
            f"image {meta['name']!r} is in use by {shown}: point them at another image first",
            {"users": users},
        )


def protect_images(store: Store) -> None:
    store.add_delete_guard("Image", _refuse_image_in_use)
