"""InitProducerId: producer ids for idempotent producers.

Producer ids are unique in the cluster: each broker takes blocks of them from the metadata
quorum. Every request gets a new producer id in epoch 0, as Kafka does for producers without a
transactional id (a producer that bumps its epoch after an error is served the same
way). Transactions are not supported: a transactional id is refused with
TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which every client treats as fatal at once and
reports as "this producer may not use that transactional id", instead of retrying a
coordinator that will never appear.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

log = logging.getLogger(__name__)


async def handle(context: ApiContext, request: Request) -> Mapping[str, Any]:
    if request.body.transactional_id is not None:
        # Counted as an error of the API; info, not warning, so that a client retrying in
        # a loop cannot flood the log at the default level.
        log.info(
            "refused a transactional producer: transactions are not supported",
            extra={"transactional_id": request.body.transactional_id},
        )
        count_error(request, ErrorCode.transactional_id_authorization_failed)
        return {
            "error_code": ErrorCode.transactional_id_authorization_failed,
            "producer_id": -1,
            "producer_epoch": -1,
        }
    try:
        producer_id = await context.allocate_producer_id()
    except ApiError as error:
        count_error(request, error.code)
        return {"error_code": error.code, "producer_id": -1, "producer_epoch": -1}
    return {"error_code": ErrorCode.none, "producer_id": producer_id, "producer_epoch": 0}
