"""The canonical op set. Frontends map their native ops onto these names; channel rules,
cost and energy analyses are written once against them.

Each op documents its inputs (in order) and the attributes a frontend must fill in.
"""

CONV = "conv"  # [x, weight, bias?]; groups, stride, padding, dilation, transposed
LINEAR = "linear"  # [x, weight(out,in), bias?]
MATMUL = "matmul"  # [a, b]; batched matmul with broadcasting over leading dims
EINSUM = "einsum"  # [*operands]; equation
GROUPED_MATMUL = "grouped_matmul"  # [x(S,K), weight(E,K,N), offsets(E)?]: mixture of experts
RNN = "rnn"  # [x, *params]; mode (lstm|gru|rnn), layers, bidirectional, biases
ATTENTION = "attention"  # [q, k, v, mask?]; scale (None = 1/sqrt(E))
EMBEDDING = "embedding"  # [weight(num,dim), indices]
BATCHNORM = "batchnorm"  # [x, weight?, bias?, running_mean?, running_var?]; eps
LAYERNORM = "layernorm"  # [x, weight?, bias?]; ndims (trailing dims normalised)
GROUPNORM = "groupnorm"  # [x, weight?, bias?]; groups
UNARY = "unary"  # [x]; fn; elementwise, shape preserving
BINARY = "binary"  # [a, b, ...]; fn; elementwise with numpy broadcasting
SOFTMAX = "softmax"  # [x]; axis
REDUCE = "reduce"  # [x]; fn (mean|sum|max|...), axes, keepdim
POOL = "pool"  # [x]; fn; dims 0 and 1 (batch, channel) kept, spatial dims resampled
RESHAPE = "reshape"  # [x]; view/reshape/flatten/unflatten/squeeze/unsqueeze: concrete shapes
PERMUTE = "permute"  # [x]; perm
EXPAND = "expand"  # [x]; broadcast to the output shape
CONCAT = "concat"  # [*xs]; axis
SPLIT = "split"  # [x] -> several outputs; axis
STACK = "stack"  # [*xs]; axis (new)
SELECT = "select"  # [x]; axis, index (axis removed)
SLICE = "slice"  # [x]; axis, start, end, step
INDEX = "index"  # [x, *index tensors]; axes indexed
PAD = "pad"  # [x]; padded axes
ROLL = "roll"  # [x]; axes
FILL = "fill"  # [] or [like]; a new tensor (zeros, ones, full, arange) of a given shape
CONSTANT = "constant"  # a tensor baked into the graph
BARRIER = "barrier"  # an op whose channel semantics are unknown: nothing through it is pruned

ALL = [
    CONV, LINEAR, MATMUL, EINSUM, GROUPED_MATMUL, RNN, ATTENTION, EMBEDDING, BATCHNORM, LAYERNORM, GROUPNORM,
    UNARY, BINARY, SOFTMAX, REDUCE, POOL, RESHAPE, PERMUTE, EXPAND, CONCAT, SPLIT, STACK,
    SELECT, SLICE, INDEX, PAD, ROLL, FILL, CONSTANT, BARRIER,
]
