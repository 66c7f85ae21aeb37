"""The Flower adapters' conversions: a request and a reply cross a message unchanged."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from fedsim.core.client import ClientReply, ClientRequest
from fedsim.flower.messages import config_from_record, request_from_record, request_record
from tests.helpers.engine import make_cfg


@pytest.mark.parametrize(
    "request_",
    [
        ClientRequest(action="train", round=3, client_id=5, rho=0.5),
        ClientRequest(action="local", round=1, client_id=0, rank=4, client_state_dir="/tmp/run/client_state"),
        ClientRequest(action="upload", round=2, client_id=1, rho=0.875, rank=2),
    ],
)
def test_a_request_crosses_a_message_unchanged(request_):
    cfg = make_cfg(**{"run.method": "soft-ef"})
    record = request_record(cfg, request_)
    assert request_from_record(record, request_.action) == request_
    assert config_from_record(record) == cfg


def test_a_reply_crosses_a_message_unchanged():
    arrays = {"m::A_values": np.ones(3, np.float32)}
    upload = ClientReply(
        client_id=2,
        num_samples=52,
        train_loss=1.25,
        train_wall_s=0.5,
        arrays=arrays,
        payload_bits=1_278_304,
        kept_ranks=4.0,
        dropped_rank_error=0.25,
        mean_abs_cos=0.1,
        sparsify_time_s=0.01,
        personal_metric=0.75,
        extra={"local_steps": 3.0, "residual_norm": 0.5},
    )
    back = ClientReply.from_scalars(dict(MetricRecord(upload.scalars())), arrays)
    assert back == upload and isinstance(back.payload_bits, int) and isinstance(back.num_samples, int)
    report = ClientReply(client_id=0, num_samples=8, train_loss=2.0, train_wall_s=0.1, dropped_errors=(0.0, 0.5))
    assert ClientReply.from_scalars(dict(ConfigRecord(report.scalars()))) == report
