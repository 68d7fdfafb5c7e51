"""gcp-storage-emulator (PyPI) with the one GCS behaviour it lacks: the precondition
`ifGenerationMatch=0` on uploads (a 412 when the object exists), which core/storage.py's
conditional create relies on. Version 2026.7.19 ignores every precondition (its
handlers/objects.py never reads one), so without this a race test on it could not fail.

    python tests/gcs_server.py PORT     # in memory, on 127.0.0.1:PORT (the `gcs_endpoint` fixture)

The emulator serves one request at a time (http.server.HTTPServer), so the check and the write of
one upload cannot interleave with another request: the upload is as exclusive as on GCS.
`GET /preconditions` answers how many uploads carried the precondition and how many it refused,
so a test can see the request the code sends.
"""
from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

COUNTS = {"sent": 0, "refused": 0}


def _with_precondition(upload):
    def checked(request, response, storage):
        if request.query.get("ifGenerationMatch") == ["0"]:
            COUNTS["sent"] += 1
            name = request.query["name"][0] if "name" in request.query else (request.data or {}).get("meta", {}).get(
                "name") or (request.data or {}).get("name")
            try:
                storage.get_file_obj(request.params["bucket_name"], name)
            except NotFound:
                pass
            else:
                COUNTS["refused"] += 1
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you "
                                                                 "specified did not hold."}})
                return None
        return upload(request, response, storage)
    return checked


def _counts(request, response, storage):
    response.json(dict(COUNTS))


def main(port: int) -> None:
    for name in ("_media_upload", "_multipart_upload", "_create_resumable_upload"):
        setattr(objects, name, _with_precondition(getattr(objects, name)))
    server.HANDLERS = ((r"^/preconditions$", {server.GET: _counts}),) + tuple(server.HANDLERS)
    server.create_server("127.0.0.1", port, in_memory=True).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
