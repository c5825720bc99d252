//! The one list of differentiable ops.
//!
//! `RECORDED` ops push a node of that name on the autograd tape; `COMPOSITE`
//! ops are public functions built from recorded ones. The gradcheck suite
//! (`tests/gradcheck/`) fails unless every name here has a case, and unless
//! the cases together put every recorded op on a tape.

pub const RECORDED: &[&str] = &[
    // shape and view ops (ops/shape.rs)
    "reshape",
    "permute",
    "narrow",
    "broadcast_to",
    "contiguous",
    "cat",
    "index_select",
    "gather",
    "to_dtype",
    // elementwise (ops/elementwise.rs)
    "add",
    "sub",
    "mul",
    "div",
    "add_scalar",
    "mul_scalar",
    "neg",
    "exp",
    "log",
    "sqrt",
    "pow",
    "abs",
    // activations (ops/activations.rs)
    "relu",
    "gelu_erf",
    "gelu_tanh",
    "sigmoid",
    "tanh",
    // linear algebra (ops/matmul.rs)
    "matmul",
    "linear",
    // reductions (ops/reduce.rs)
    "sum",
    "mean",
    "max",
    "var",
    // softmax family (ops/softmax.rs)
    "softmax",
    "log_softmax",
    // normalisation (ops/layernorm.rs, ops/batchnorm.rs, ops/normalize.rs)
    "layer_norm",
    "batch_norm_2d",
    "l2_normalize",
    // convolution and pooling (ops/conv2d.rs, ops/pool.rs)
    "conv2d",
    "max_pool2d",
    "adaptive_avg_pool2d",
    // regularisation (ops/dropout.rs)
    "dropout",
    // attention (ops/attention.rs, ops/attention/packed.rs)
    "scaled_dot_product_attention",
    "multi_head_attention",
    // losses (ops/loss/)
    "cross_entropy",
    "nt_xent",
    // data parallelism (dist/gather.rs, dist/sync_batchnorm.rs)
    "all_gather",
    "sync_batch_norm_2d",
];

pub const COMPOSITE: &[&str] = &[
    "transpose",         // permute of two axes
    "stack",             // reshape + cat
    "global_avg_pool2d", // adaptive_avg_pool2d to 1×1, flattened
    "temporal_mean",     // mean over the frame axis of [B, T, ...]
    "cosine_similarity", // l2_normalize rows, then matmul
    "global_nt_xent",    // all_gather + index_select + nt_xent (dist/gather.rs)
];

pub fn is_recorded_op(name: &str) -> bool {
    RECORDED.contains(&name)
}

/// Every registered name, recorded and composite.
pub fn all() -> impl Iterator<Item = &'static str> {
    RECORDED.iter().chain(COMPOSITE.iter()).copied()
}
