"""Bad flow parameters (as a deployment would pass them) are one-line ConfigErrors."""

from __future__ import annotations

import pytest

from flows.ingest_flow import ingest_flow
from imgrag.errors import ConfigError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_ingest_flow_with_batch_size_0_fails_with_a_one_line_config_error(store_env, tmp_path):
    with pytest.raises(ConfigError) as caught:
        ingest_flow(source=str(tmp_path), batch_size=0)
    message = str(caught.value)
    assert message.startswith("invalid batch_size: ") and "\n" not in message
    assert not store_env.exists()  # failed before opening the store


def test_ingest_flow_with_an_empty_shard_fails_with_no_shard_given(store_env, tmp_path):
    with pytest.raises(ConfigError, match=r"^no shard given: pass shard=I/N"):
        ingest_flow(source=str(tmp_path), shard="")  # the ingest-shard deployment's default
    assert not store_env.exists()
