import pytest
from flax import nnx

from optim_helpers import tiny_decoder


@pytest.fixture(scope="session")
def decoder_params():
    """(graphdef, params) of the tiny real Decoder named in the issue."""
    return nnx.split(tiny_decoder(), nnx.Param)
