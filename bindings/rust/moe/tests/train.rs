// The safe API doing real work against the built libmoe: a tiny MoE model learns a pattern (the loss
// falls), a checkpoint saved with its optimizer reloads into a fresh model that gives the same logits
// and resumes training bit for bit, a bad config fails with the library's message, plus parameters
// by name, tensors, layers, the optimizer and the logger.

use std::cell::RefCell;
use std::fs;
use std::path::PathBuf;
use std::rc::Rc;

use moe::{
    read_checkpoint_info, Batch, CheckpointInfo, Ctx, CtxConfig, Dtype, ErrorKind, Layer, LayerConfig, LayerKind,
    LogLevel, Mesh, MeshAxis, Model, ModelConfig, Optimizer, OptimizerConfig, Tensor,
};

const VOCAB: usize = 13;

/// The tiny config the C tests use too: 2 blocks of d_model 8, 4 experts of hidden 6, top-2.
fn tiny_config() -> ModelConfig {
    let mut c = ModelConfig::default();
    c.vocab_size = VOCAB as i32;
    c.max_seq_len = 16;
    c.d_model = 8;
    c.num_layers = 2;
    c.num_heads = 2;
    c.num_kv_heads = 1;
    c.head_dim = 4;
    c.ffn_hidden = 12;
    c.moe_num_experts = 4;
    c.moe_top_k = 2;
    c.moe_expert_hidden = 6;
    c.init_std = 0.05;
    c
}

/// A learnable pattern: the next token is (token + 1) mod vocab.
fn pattern(n: usize) -> (Vec<i32>, Vec<i32>) {
    let tokens: Vec<i32> = (0..n).map(|i| ((i * 5 + i / 8) % VOCAB) as i32).collect();
    let targets = tokens.iter().map(|t| (t + 1) % VOCAB as i32).collect();
    (tokens, targets)
}

fn ctx_with_seed(seed: u64) -> Ctx {
    let mut cc = CtxConfig::default();
    cc.seed = seed;
    Ctx::with_config(&cc).expect("ctx")
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("moe-rust-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn version_matches_headers() {
    let v = moe::version();
    assert_eq!(v.major, moe::sys::MOE_VERSION_MAJOR);
    assert_eq!(v.minor, moe::sys::MOE_VERSION_MINOR);
    assert_eq!(v.patch, moe::sys::MOE_VERSION_PATCH);
    assert_eq!(v.text, format!("{}.{}.{}", v.major, v.minor, v.patch));
}

#[test]
fn tiny_model_trains_and_checkpoint_round_trips() {
    let ctx = ctx_with_seed(7);
    let mesh = Mesh::new(&ctx).unwrap();
    assert_eq!(mesh.group_size(MeshAxis::World).unwrap(), 1);
    let model = Model::new(&ctx, &mesh, &tiny_config()).unwrap();
    let (total, active) = model.num_params().unwrap();
    assert!(total > active && active > 0);

    let mut oc = OptimizerConfig::default();
    oc.lr = 1e-2;
    let opt = Optimizer::new(&model, &oc).unwrap();
    let (tokens, targets) = pattern(4 * 8);
    let batch = Batch::new(&tokens, &targets, 4, 8).unwrap();
    assert_eq!(batch.num_micro_batches(), 1);

    let mut losses = Vec::new();
    for step in 0..25 {
        let s = model.train_step(&opt, &batch).unwrap();
        assert_eq!(s.step, step + 1);
        assert_eq!(s.tokens, 32);
        assert_eq!(s.skipped, 0);
        assert!(s.loss.is_finite() && s.grad_norm.is_finite());
        losses.push(s.loss);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!((first - (VOCAB as f64).ln()).abs() < 0.5, "a fresh model is near uniform: {}", first);
    assert!(last < 0.6 * first, "the loss fell from {} to only {}", first, last);

    // save (with the optimizer), then one more step
    let tmp = TempDir::new("ckpt");
    let mut info = CheckpointInfo::default();
    info.step = 25;
    info.data_position = 800;
    let json = "{\"run\": \"rust-test\"}";
    model.save_checkpoint(Some(&opt), &tmp.0, &info, Some(json)).unwrap();
    let logits = model.forward(&tokens[..8], 1, 8).unwrap();
    let next = model.train_step(&opt, &batch).unwrap();

    // resume elsewhere: config and record from the checkpoint, a ctx of the saved seed
    let (record, text) = read_checkpoint_info(&tmp.0).unwrap();
    assert_eq!((record.step, record.data_position, record.rng_seed), (25, 800, 7));
    assert_eq!(text, json);
    let cfg = ModelConfig::from_checkpoint(&tmp.0).unwrap();
    assert_eq!((cfg.d_model, cfg.moe_num_experts), (8, 4));
    let ctx2 = ctx_with_seed(record.rng_seed);
    let mesh2 = Mesh::new(&ctx2).unwrap();
    let fresh = Model::new(&ctx2, &mesh2, &cfg).unwrap();
    let opt2 = Optimizer::new(&fresh, &oc).unwrap();
    let other = fresh.forward(&tokens[..8], 1, 8).unwrap();
    assert_ne!(other, logits, "before loading, the fresh model's weights are its own");
    let (loaded, loaded_text) = fresh.load_checkpoint(Some(&opt2), &tmp.0).unwrap();
    assert_eq!((loaded.step, loaded_text.as_str()), (25, json));
    assert_eq!(fresh.forward(&tokens[..8], 1, 8).unwrap(), logits);
    let resumed = fresh.train_step(&opt2, &batch).unwrap();
    assert_eq!(resumed.step, 26);
    assert_eq!(resumed.loss.to_bits(), next.loss.to_bits(), "the resumed step is the uninterrupted one, bit for bit");

    // failures carry the library's message and change nothing
    let missing = fresh.load_checkpoint(None, &tmp.0.join("no-such-step")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Io);
    assert!(missing.message().contains("no-such-step"), "{}", missing);
    let mut wider = tiny_config();
    wider.d_model = 16;
    let other_model = Model::new(&ctx2, &mesh2, &wider).unwrap();
    let err = other_model.load_checkpoint(None, &tmp.0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArg);
    assert!(err.message().contains("d_model"), "{}", err);
}

#[test]
fn parameters_round_trip_by_name() {
    let ctx = ctx_with_seed(7);
    let mesh = Mesh::new(&ctx).unwrap();
    let model = Model::new(&ctx, &mesh, &tiny_config()).unwrap();
    let (tokens, _) = pattern(8);
    let snapshot = model.save_params().unwrap();
    let logits = model.forward(&tokens, 1, 8).unwrap();
    let ctx2 = ctx_with_seed(99);
    let mesh2 = Mesh::new(&ctx2).unwrap();
    let fresh = Model::new(&ctx2, &mesh2, &tiny_config()).unwrap();
    assert_ne!(fresh.forward(&tokens, 1, 8).unwrap(), logits, "another seed gives other weights");
    fresh.load_params(&snapshot).unwrap();
    assert_eq!(fresh.forward(&tokens, 1, 8).unwrap(), logits);
    assert_eq!(fresh.save_params().unwrap(), snapshot);
    let name = &snapshot.tensors[0].0.name;
    let err = fresh.write_param(name, &[0.0; 3]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArg);
    assert!(!err.message().is_empty());
}

#[test]
fn bad_config_is_a_typed_error_with_the_library_message() {
    let ctx = Ctx::new().unwrap();
    let mesh = Mesh::new(&ctx).unwrap();
    let mut cfg = tiny_config();
    cfg.d_model = 0;

    let err = cfg.validate().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArg);
    assert!(err.message().contains("d_model"), "{}", err);

    let err = Model::new(&ctx, &mesh, &cfg).err().expect("d_model 0 must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidArg);
    assert_eq!(err.status(), moe::sys::MOE_ERR_INVALID_ARG);
    assert!(err.message().contains("moe_model_config.d_model"), "{}", err);
    assert!(err.to_string().starts_with("MOE_ERR_INVALID_ARG: "), "{}", err);
    assert!(ctx.last_error().contains("d_model"));

    // the binding's own checks use the same error type
    let model = Model::new(&ctx, &mesh, &tiny_config()).unwrap();
    let err = model.forward(&[1, 2, 3], 1, 8).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArg);
    let err = Batch::new(&[1, 2, 3], &[1, 2, 3], 2, 2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArg);
    // a token out of the vocabulary: the library names its position
    let err = model.forward(&[0, 1, 2, 99], 1, 4).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArg);
    assert!(!err.message().is_empty());
}

#[test]
fn tensors_round_trip_and_check_their_dtype() {
    let ctx = Ctx::new().unwrap();
    let t = Tensor::new(&ctx, Dtype::F32, &[2, 3]).unwrap();
    assert_eq!(t.shape().unwrap(), vec![2, 3]);
    assert_eq!(t.dtype().unwrap(), Dtype::F32);
    assert_eq!(t.size().unwrap(), (6, 24));
    assert_eq!(Dtype::F32.size().unwrap(), 4);
    let data = [1.0f32, -2.0, 3.5, 0.0, 1e-3, 7.0];
    t.copy_from(&data).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), data.to_vec());
    t.fill(2.5).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![2.5; 6]);
    assert_eq!(t.copy_from(&[1i32; 6]).unwrap_err().kind(), ErrorKind::InvalidArg);
    assert_eq!(t.copy_from(&[1.0f32; 5]).unwrap_err().kind(), ErrorKind::InvalidArg);
    let (current, peak) = ctx.memory().unwrap();
    assert!(current >= 24 && peak >= current);
    drop(t);
    assert!(Tensor::new(&ctx, Dtype::F32, &[-1]).is_err());
}

#[test]
fn standalone_layer_forward_backward() {
    let ctx = Ctx::new().unwrap();
    let mesh = Mesh::new(&ctx).unwrap();
    let mut lc = LayerConfig::default();
    lc.d_model = 8;
    lc.hidden = 6;
    lc.num_experts = 4;
    lc.top_k = 2;
    let layer = Layer::new(&ctx, &mesh, &lc).unwrap();
    assert_eq!(layer.kind().unwrap(), LayerKind::Moe);
    assert_eq!(layer.backward(&[0.0; 16]).unwrap_err().kind(), ErrorKind::State);
    let x: Vec<f32> = (0..2 * 8).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
    let y = layer.forward(&x, 1, 2).unwrap();
    assert_eq!(y.len(), x.len());
    assert!(y.iter().all(|v| v.is_finite()) && y.iter().any(|&v| v != 0.0));
    let (stats, per_expert) = layer.routing_stats().unwrap();
    assert_eq!(stats.tokens, 2);
    assert_eq!(per_expert.iter().sum::<i64>(), stats.assignments);
    assert_eq!(layer.backward(&[0.0; 3]).unwrap_err().kind(), ErrorKind::InvalidArg);
    let dx = layer.backward(&vec![1.0; y.len()]).unwrap();
    assert_eq!(dx.len(), x.len());
    let params = layer.params().unwrap();
    assert!(!params.is_empty());
    let mut g = vec![0f32; params[0].numel()];
    layer.read_param_into(0, true, &mut g).unwrap();
    assert!(g.iter().any(|&v| v != 0.0), "the backward added gradients");
    layer.zero_grad().unwrap();
    layer.read_param_into(0, true, &mut g).unwrap();
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn borrowed_layer_knows_when_the_model_ran() {
    let ctx = Ctx::new().unwrap();
    let mesh = Mesh::new(&ctx).unwrap();
    let model = Model::new(&ctx, &mesh, &tiny_config()).unwrap();
    let layer = Layer::of_model(&model, 0, LayerKind::Moe).unwrap();
    let x = vec![0.1f32; 3 * 8];
    let y = layer.forward(&x, 1, 3).unwrap();
    let (tokens, _) = pattern(8);
    model.forward(&tokens, 1, 8).unwrap(); // replaces the layer's saved state (8 rows, not 3)
    assert_eq!(layer.backward(&y).unwrap_err().kind(), ErrorKind::State);
    layer.forward(&x, 1, 3).unwrap();
    assert_eq!(layer.backward(&y).unwrap().len(), x.len());
    assert!(Layer::of_model(&model, 9, LayerKind::Moe).is_err());
}

#[test]
fn custom_loop_with_optimizer_step() {
    let ctx = Ctx::new().unwrap();
    let mesh = Mesh::new(&ctx).unwrap();
    let model = Model::new(&ctx, &mesh, &tiny_config()).unwrap();
    let mut oc = OptimizerConfig::default();
    oc.lr = 1e-2;
    oc.warmup_steps = 4;
    let opt = Optimizer::new(&model, &oc).unwrap();
    assert!((opt.lr_at(0).unwrap() - 1e-2 / 4.0).abs() < 1e-9);
    let (tokens, targets) = pattern(16);
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..10 {
        model.zero_grad().unwrap();
        let l = model.forward_backward(&tokens, &targets, 2, 8, 1.0).unwrap();
        let s = opt.step().unwrap();
        assert_eq!(s.skipped, 0);
        first.get_or_insert(l.lm);
        last = l.lm;
    }
    assert!(last < first.unwrap());
    let (rs, per_expert) = model.routing_stats(0).unwrap();
    assert_eq!(rs.num_experts, 4);
    assert_eq!(per_expert.len(), 4);
}

#[test]
fn logger_gets_errors_and_a_panicking_logger_stays_in_rust() {
    let seen: Rc<RefCell<Vec<(LogLevel, String)>>> = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    let mut cc = CtxConfig::default();
    cc.log_level = moe::sys::MOE_LOG_DEBUG;
    let ctx = Ctx::with_logger(&cc, move |level, msg| sink.borrow_mut().push((level, msg.to_string()))).unwrap();
    let mesh = Mesh::new(&ctx).unwrap();
    let mut bad = tiny_config();
    bad.num_kv_heads = 5;
    assert!(Model::new(&ctx, &mesh, &bad).is_err());
    assert!(seen.borrow().iter().any(|(l, m)| *l == LogLevel::Error && m.contains("num_kv_heads")));

    let ctx2 = Ctx::with_logger(&cc, |_, _| panic!("a logger that panics")).unwrap();
    let mesh2 = Mesh::new(&ctx2).unwrap();
    let err = Model::new(&ctx2, &mesh2, &bad).err().expect("still an error, not an unwind through C");
    assert!(err.message().contains("num_kv_heads"));
}
