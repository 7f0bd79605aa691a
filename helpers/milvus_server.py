"""Facade: the server lifecycle now lives in the :mod:`helpers.servers` package (one module per
concern). Notebooks, tests and benches import these names from here, unchanged."""

from __future__ import annotations

from helpers.servers import (
    LOCAL_BACKENDS,
    PIDFILE,
    CppSlotBusy,
    MilvusHandle,
    MilvusServerError,
    cpp_slot_busy,
    leftover_servers,
    milvus_server,
    running_handles,
    server_processes,
    start_backend,
    start_milvus,
    start_waiting_for_slot,
    stop_all,
    wait_for_cpp_slot,
)

__all__ = [
    "LOCAL_BACKENDS",
    "PIDFILE",
    "CppSlotBusy",
    "MilvusHandle",
    "MilvusServerError",
    "cpp_slot_busy",
    "leftover_servers",
    "milvus_server",
    "running_handles",
    "server_processes",
    "start_backend",
    "start_milvus",
    "start_waiting_for_slot",
    "stop_all",
    "wait_for_cpp_slot",
]
