"""The test emulator behaves like an apiserver where our tests depend on it: generation,
resourceVersion, the status subresource, generateName, selectors and watch resumption."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
from support.kube_emulator import ServedCluster

API = "/apis/forwarder.dev/v1alpha1/namespaces/default/scheduledtasks"
MERGE = {"Content-Type": "application/merge-patch+json"}
SPEC = {"task": "forwarder.ping", "schedule": {"every": "1s"}}


def test_generation_counts_spec_changes_only(cluster: ServedCluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        body = {"metadata": {"name": "g"}, "spec": SPEC}
        created = http.post(API, json=body)
        assert created.status_code == 201
        meta = created.json()["metadata"]
        assert meta["generation"] == 1 and meta["uid"] and meta["namespace"] == "default"

        def patch(path: str, change: dict[str, Any]) -> dict[str, Any]:
            reply = http.patch(f"{API}/g{path}", json=change, headers=MERGE)
            assert reply.status_code == 200, reply.text
            return dict(reply.json())

        after_spec = patch("", {"spec": {"suspend": True}})
        assert after_spec["metadata"]["generation"] == 2
        assert int(after_spec["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
        after_labels = patch("", {"metadata": {"labels": {"a": "b"}}})
        assert after_labels["metadata"]["generation"] == 2
        after_status = patch("/status", {"status": {"observedGeneration": 2}})
        assert after_status["metadata"]["generation"] == 2
        assert after_status["status"] == {"observedGeneration": 2}
        # The status subresource changes status only; the object never changes status.
        ignored = patch("/status", {"spec": {"suspend": False}, "status": {"x": 1}})
        assert ignored["spec"]["suspend"] is True
        kept = patch("", {"status": {"observedGeneration": 99}})
        assert kept["status"]["observedGeneration"] == 2
        # A JSON patch with a stale resourceVersion is a conflict (422), as kopf expects.
        stale = http.patch(
            f"{API}/g",
            content=json.dumps([{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}]),
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert stale.status_code == 422


def test_generate_name_and_field_selectors(cluster: ServedCluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        for _ in range(2):
            event = {
                "metadata": {"generateName": "ev-"},
                "involvedObject": {"name": "x"},
                "reason": "R",
            }
            assert http.post("/api/v1/namespaces/default/events", json=event).status_code == 201
        other = {"metadata": {"name": "other"}, "involvedObject": {"name": "y"}}
        assert http.post("/api/v1/namespaces/default/events", json=other).status_code == 201
        listed = http.get(
            "/api/v1/namespaces/default/events",
            params={"fieldSelector": "involvedObject.name=x"},
        ).json()
        assert listed["kind"] == "EventList"
        assert len(listed["items"]) == 2
        assert all(i["metadata"]["name"].startswith("ev-") for i in listed["items"])


def test_watch_from_a_version_sends_later_changes_only(cluster: ServedCluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        http.post(API, json={"metadata": {"name": "old"}, "spec": SPEC})
        version = http.get(API).json()["metadata"]["resourceVersion"]
        # Created after the LIST, before the WATCH: a client must not lose it.
        http.post(API, json={"metadata": {"name": "new"}, "spec": SPEC})
        seen: list[str] = []

        def watch() -> None:
            with http.stream(
                "GET", API, params={"watch": "true", "resourceVersion": version}, timeout=5
            ) as stream:
                for line in stream.iter_lines():
                    if line.strip():
                        seen.append(json.loads(line)["object"]["metadata"]["name"])
                        return

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        reader.join(10)
        assert seen == ["new"]
