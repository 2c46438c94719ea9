"""The floating dtypes a model is stored or computed in, by the names users type."""

import mlx.core as mx

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
