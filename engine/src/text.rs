//! Sentence encoder: tokenizer + ONNX transformer + pooling + L2 normalisation.
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;
use sha2::{Digest, Sha256};
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{EngineError, Result};
use crate::manifest::{Manifest, Pooling, TextEncoderSpec};
use crate::runtime;

/// Sentences per ONNX call; bounds memory for 10,000-label sets.
const BATCH: usize = 64;

pub struct TextEncoder {
    tokenizer: Tokenizer,
    session: Session,
    spec: TextEncoderSpec,
    model_path: PathBuf,
    dim: usize,
    pad_id: i64,
    fingerprint: String,
}

/// Embeddings of a batch of sentences, `dim` floats each, L2-normalised.
pub struct Encoded {
    pub vectors: Vec<f32>,
    /// Whether each sentence was cut at `max_tokens`.
    pub truncated: Vec<bool>,
}

impl TextEncoder {
    pub fn load(dir: &Path, manifest: &Manifest, threads: usize) -> Result<Self> {
        let spec = manifest.text_encoder.clone();
        let model_path = dir.join(&spec.file);
        let tokenizer_path = dir.join(&spec.tokenizer);
        let model_bytes = read_file(&model_path)?;
        let tokenizer_bytes = read_file(&tokenizer_path)?;

        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes).map_err(|e| EngineError::ModelFile {
            path: tokenizer_path.clone(),
            reason: format!("not a valid tokenizer.json: {e}"),
        })?;
        // Shipped tokenizers often pad every sentence to a fixed length; we pad per batch instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: spec.max_tokens, ..Default::default() }))
            .map_err(|e| EngineError::ModelFile { path: tokenizer_path.clone(), reason: e.to_string() })?;
        let pad_id = ["[PAD]", "<pad>"].iter().find_map(|t| tokenizer.token_to_id(t)).unwrap_or(0) as i64;

        let session = runtime::open_session(&model_path, threads)?;
        for input in [Some(&spec.input_ids), Some(&spec.attention_mask), spec.token_type_ids.as_ref()].into_iter().flatten() {
            runtime::tensor_shape(&session, &model_path, input, true)?;
        }
        let out_shape = runtime::tensor_shape(&session, &model_path, &spec.output, false)?;
        let want_rank = if spec.pooling == Pooling::Pooled { 2 } else { 3 };
        if out_shape.len() != want_rank {
            return Err(EngineError::ModelFile {
                path: model_path,
                reason: format!(
                    "output {:?} has shape {out_shape:?}; pooling {:?} needs rank {want_rank}",
                    spec.output, spec.pooling
                ),
            });
        }
        let last = *out_shape.last().unwrap_or(&-1);
        if last >= 0 && last as usize != manifest.embedding_dim {
            return Err(EngineError::ModelFile {
                path: model_path,
                reason: format!(
                    "output {:?} has embedding dim {last}, manifest embedding_dim is {}",
                    spec.output, manifest.embedding_dim
                ),
            });
        }

        let mut hasher = Sha256::new();
        hasher.update(&model_bytes);
        hasher.update(&tokenizer_bytes);
        hasher.update(format!("{:?}/{}", spec.pooling, spec.max_tokens).as_bytes());
        let fingerprint = hex::encode(hasher.finalize());

        Ok(TextEncoder { tokenizer, session, spec, model_path, dim: manifest.embedding_dim, pad_id, fingerprint })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Identifies encoder weights, tokenizer and pooling: part of every label cache key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn encode(&mut self, sentences: &[String]) -> Result<Encoded> {
        let encodings = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(|e| EngineError::Labels(format!("tokenizing: {e}")))?;
        let truncated: Vec<bool> = encodings.iter().map(|e| !e.get_overflowing().is_empty()).collect();

        // Similar lengths share a batch so little padding is computed.
        let mut order: Vec<usize> = (0..sentences.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut vectors = vec![0.0f32; sentences.len() * self.dim];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&tokenizers::Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let pooled = self.run_batch(&batch)?;
            for (row, &i) in chunk.iter().enumerate() {
                let v = &pooled[row * self.dim..(row + 1) * self.dim];
                vectors[i * self.dim..(i + 1) * self.dim].copy_from_slice(v);
            }
        }
        Ok(Encoded { vectors, truncated })
    }

    fn run_batch(&mut self, batch: &[&tokenizers::Encoding]) -> Result<Vec<f32>> {
        let n = batch.len();
        let len = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(1).max(1);
        let mut ids = vec![self.pad_id; n * len];
        let mut mask = vec![0i64; n * len];
        let mut types = vec![0i64; n * len];
        for (b, enc) in batch.iter().enumerate() {
            for (t, (&id, &ty)) in enc.get_ids().iter().zip(enc.get_type_ids()).enumerate() {
                ids[b * len + t] = id as i64;
                mask[b * len + t] = 1;
                types[b * len + t] = ty as i64;
            }
        }
        let shape = [n as i64, len as i64];
        let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
            (self.spec.input_ids.clone(), Tensor::from_array((shape, ids))?.into_dyn()),
            (self.spec.attention_mask.clone(), Tensor::from_array((shape, mask.clone()))?.into_dyn()),
        ];
        if let Some(name) = &self.spec.token_type_ids {
            inputs.push((name.clone(), Tensor::from_array((shape, types))?.into_dyn()));
        }
        let outputs = self.session.run(inputs)?;
        let value = outputs.get(self.spec.output.as_str()).ok_or_else(|| EngineError::ModelFile {
            path: self.model_path.clone(),
            reason: format!("run produced no output {:?}", self.spec.output),
        })?;
        let (out_shape, data) = value.try_extract_tensor::<f32>()?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        let d = self.dim;
        let mut pooled = vec![0.0f32; n * d];
        match self.spec.pooling {
            Pooling::Pooled => {
                check_dims(&self.model_path, &dims, &[n as i64, d as i64])?;
                pooled.copy_from_slice(&data[..n * d]);
            }
            Pooling::Cls | Pooling::Mean => {
                check_dims(&self.model_path, &dims, &[n as i64, len as i64, d as i64])?;
                for b in 0..n {
                    let out = &mut pooled[b * d..(b + 1) * d];
                    let tokens = if self.spec.pooling == Pooling::Cls { 1 } else { len };
                    let mut count = 0.0f32;
                    for t in 0..tokens {
                        if mask[b * len + t] == 0 {
                            continue;
                        }
                        count += 1.0;
                        let h = &data[(b * len + t) * d..(b * len + t + 1) * d];
                        out.iter_mut().zip(h).for_each(|(o, x)| *o += x);
                    }
                    out.iter_mut().for_each(|o| *o /= count.max(1.0));
                }
            }
        }
        for v in pooled.chunks_mut(d) {
            crate::costmap::l2_normalize(v);
        }
        Ok(pooled)
    }
}

fn check_dims(path: &Path, got: &[i64], want: &[i64]) -> Result<()> {
    if got != want {
        return Err(EngineError::ModelFile {
            path: path.to_path_buf(),
            reason: format!("text encoder output has shape {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| EngineError::ModelFile { path: path.to_path_buf(), reason: format!("cannot read: {e}") })
}
