// Generation and datasets through the safe API: greedy generation and the KV-cached decoder agree
// with a full forward; an indexed dataset written by the writer reads back as the sample rule says.

use std::fs;
use std::path::PathBuf;

use moe::{
    write_indexed, Ctx, Dataset, DatasetConfig, DatasetWriter, Decoder, ErrorKind, GenerateConfig, Mesh, Model,
    ModelConfig, Split,
};

const VOCAB: usize = 13;

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
    c.init_std = 0.3;
    c
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
fn greedy_generation_and_the_decoder_agree_with_forward() {
    let ctx = Ctx::new().unwrap();
    let mesh = Mesh::new(&ctx).unwrap();
    let model = Model::new(&ctx, &mesh, &tiny_config()).unwrap();
    let prompt = [3, 1, 4];
    let mut gc = GenerateConfig::default();
    gc.max_new_tokens = 5;
    let out = model.generate(&prompt, &gc).unwrap();
    assert_eq!(out.len(), 5);

    // greedy = argmax of the full forward's last logits, step by step
    let mut seq = prompt.to_vec();
    for &next in &out {
        let logits = model.forward(&seq, 1, seq.len()).unwrap();
        let last = &logits[(seq.len() - 1) * VOCAB..];
        let mut best = 0;
        for v in 1..VOCAB {
            if last[v] > last[best] {
                best = v;
            }
        }
        assert_eq!(next as usize, best);
        seq.push(next);
    }

    let decoder = Decoder::new(&model, 0).unwrap();
    let logits = decoder.feed(&seq[..4]).unwrap();
    assert_eq!(decoder.len().unwrap(), 4);
    let full = model.forward(&seq[..4], 1, 4).unwrap();
    for v in 0..VOCAB {
        assert!((logits[v] - full[3 * VOCAB + v]).abs() < 1e-4);
    }
    decoder.reset().unwrap();
    assert!(decoder.is_empty().unwrap());
    assert_eq!(model.generate(&[], &gc).unwrap_err().kind(), ErrorKind::InvalidArg);
    assert_eq!(decoder.feed(&[99]).unwrap_err().kind(), ErrorKind::InvalidArg);
}

#[test]
fn indexed_dataset_round_trip() {
    let tmp = TempDir::new("data");
    let ctx = Ctx::new().unwrap();
    let prefix = tmp.0.join("corpus");
    let doc1: Vec<i32> = (0..10).collect();
    let doc2: Vec<i32> = (10..30).collect();
    write_indexed(&ctx, &prefix, moe::sys::MOE_DATASET_DTYPE_U16, &[&doc1, &doc2]).unwrap();

    let mut dc = DatasetConfig::default();
    dc.seq_len = 4;
    dc.validation_fraction = 0.0;
    let ds = Dataset::open(&ctx, &prefix, &dc).unwrap();
    assert_eq!(ds.num_tokens().unwrap(), 30);
    assert_eq!(ds.num_documents().unwrap(), 2);
    assert_eq!(ds.seq_len().unwrap(), 4);
    assert_eq!(ds.num_samples(Split::Train).unwrap(), 7); // floor((30 - 1) / 4)
    assert_eq!(ds.format().unwrap(), (moe::sys::MOE_DATASET_KIND_INDEXED, moe::sys::MOE_DATASET_DTYPE_U16));
    let (tokens, targets) = ds.batch(Split::Train, 0, 3).unwrap();
    assert_eq!(tokens.len(), 12);
    for k in 0..3 {
        // the stream is 0..30, so a sample starting at p holds p..p+4 and its targets p+1..p+5
        let p = ds.sample_position(Split::Train, k as u64).unwrap() as i32;
        assert_eq!(&tokens[k * 4..k * 4 + 4], &[p, p + 1, p + 2, p + 3]);
        assert_eq!(&targets[k * 4..k * 4 + 4], &[p + 1, p + 2, p + 3, p + 4]);
    }

    let w = DatasetWriter::create(&ctx, &tmp.0.join("w"), moe::sys::MOE_DATASET_DTYPE_U8).unwrap();
    w.add_tokens(&[1, 2, 3]).unwrap();
    w.end_document().unwrap();
    assert_eq!(w.add_tokens(&[300]).unwrap_err().kind(), ErrorKind::InvalidArg);
    w.commit().unwrap();
    assert!(tmp.0.join("w.idx").exists());

    let missing = Dataset::open(&ctx, &tmp.0.join("nothing-here"), &dc).err().expect("no such file");
    assert_eq!(missing.kind(), ErrorKind::Io);
    assert!(missing.message().contains("nothing-here"), "{}", missing);
}
