"""The ``remote`` backend: a Milvus somebody else runs, reached by URI (and token).

The main job uses it too: it starts one local server for the whole course and hands its URI to
every notebook, naming the backend it started in ``GFL_MILVUS_SHARED_BACKEND``; such a handle
reports that backend's name and never stops the server (the main job does, at the end).
"""

from __future__ import annotations

from helpers.servers.handle import MilvusHandle, MilvusServerError, Server, connect, register, reuse
from helpers.settings import Settings


def connect_remote(settings: Settings, *, fresh: bool = False) -> MilvusHandle:
    if not settings.milvus_uri:
        raise MilvusServerError(
            "The remote backend needs GFL_MILVUS_URI (and GFL_MILVUS_TOKEN for Zilliz Cloud)."
        )
    shared = settings.milvus_shared_backend
    key = ("remote", settings.milvus_uri)
    handle = reuse(key)
    if handle is None:
        token = settings.milvus_token
        try:
            client, version = connect(settings.milvus_uri, token.reveal(), local=bool(shared))
        except Exception as exc:
            message = str(exc)
            if token:
                message = message.replace(token.reveal(), "***")
            raise MilvusServerError(
                f"Could not reach Milvus at {settings.milvus_uri}: {message}. Check "
                "GFL_MILVUS_URI, GFL_MILVUS_TOKEN and that the server is up."
            ) from None
        server = Server(
            shared or "remote", settings.milvus_uri, version, key, client, token=token,
            local=bool(shared), shared=bool(shared),
        )  # fmt: skip
        handle = register(server)
    if fresh and shared:
        # The shared server's data folder is the run's: wiping it means dropping what is in it,
        # as default_server.cleanup() would have.
        client = handle.client
        for name in client.list_collections():
            client.drop_collection(name)
    return handle
