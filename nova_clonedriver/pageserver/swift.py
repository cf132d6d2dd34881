"""The ``swift`` object store: OpenStack Swift through keystoneauth, with
the account of the credentials in ``[pageserver_swift]`` (the object-store
endpoint of the service catalog, or ``endpoint_override``)."""

from __future__ import annotations

import logging
from typing import Any
import urllib.parse

from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from nova_clonedriver.conf import swift as swift_conf
from nova_clonedriver.pageserver import objectstore

LOG = logging.getLogger(__name__)

LIST_LIMIT = 10000  # objects per listing (Swift's default maximum)
REQUEST_TIMEOUT_S = 60.0


class SwiftStore(objectstore.ObjectStore):
    name = "swift"

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        group = swift_conf.GROUP.name
        try:
            auth = ks_loading.load_auth_from_conf_options(conf, group)
            session = ks_loading.load_session_from_conf_options(conf, group, auth=auth)
            self._adapter = ks_loading.load_adapter_from_conf_options(conf, group, session=session)
        except ks_exceptions.ClientException as exc:
            raise ValueError(f"[{group}] does not say how to reach Swift: {exc}") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._adapter.request(
                path, method, raise_exc=False, timeout=REQUEST_TIMEOUT_S, **kwargs
            )
        except ks_exceptions.ClientException as exc:  # auth, connection, catalog
            raise objectstore.StoreError(f"Swift {method} {path}: {exc}") from exc

    @staticmethod
    def _path(container: str, name: str = "") -> str:
        path = "/" + urllib.parse.quote(container, safe="")
        return path + ("/" + urllib.parse.quote(name) if name else "")

    def _expect(self, response: Any, method: str, path: str, *codes: int) -> None:
        if response.status_code not in codes:
            raise objectstore.StoreError(
                f"Swift {method} {path}: {response.status_code} {response.text[:200]}"
            )

    def create_container(self, container: str) -> None:
        path = self._path(container)
        self._expect(self._request("PUT", path), "PUT", path, 201, 202)

    def put(self, container: str, name: str, data: bytes) -> None:
        path = self._path(container, name)
        response = self._request(
            "PUT", path, data=data, headers={"Content-Type": "application/octet-stream"}
        )
        self._expect(response, "PUT", path, 201)

    def get(self, container: str, name: str) -> bytes:
        path = self._path(container, name)
        response = self._request("GET", path)
        if response.status_code == 404:
            raise objectstore.NotFound(f"no object {container}/{name}")
        self._expect(response, "GET", path, 200)
        content: bytes = response.content
        return content

    def delete_container(self, container: str) -> None:
        path = self._path(container)
        while True:
            response = self._request("GET", path, params={"format": "json", "limit": LIST_LIMIT})
            if response.status_code == 404:
                return
            self._expect(response, "GET", path, 200, 204)
            names = [entry["name"] for entry in response.json()] if response.text else []
            if not names:
                break
            for name in names:
                object_path = self._path(container, name)
                self._expect(self._request("DELETE", object_path), "DELETE", object_path, 204, 404)
        self._expect(self._request("DELETE", path), "DELETE", path, 204, 404)
