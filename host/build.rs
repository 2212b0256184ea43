//! Writes the `o200k_base` token table the gateway counts prompt tokens with
//! (`src/tokens/bpe.rs`) into `OUT_DIR/o200k_base.ranks`.
//!
//! tiktoken-rs keeps its ranks in hash maps of owned byte vectors, three
//! times over (encoder, decoder, sorted list): about 40 MB resident for a
//! table whose bytes total under 2 MB. The gateway only counts tokens, so it
//! embeds the token bytes once, in rank order, and indexes them at start.
//!
//! Layout, all integers little-endian `u32`: the number of tokens `n`, then
//! `n + 1` offsets into the byte area (token `r` is
//! `bytes[offsets[r]..offsets[r + 1]]`), then the byte area.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    let bpe = tiktoken_rs::o200k_base()?;
    // Ordinary ranks are 0..199_998; 199_999 and up are special tokens,
    // which counting ignores (it encodes "ordinary" text, as tiktoken's
    // `encode_ordinary` does).
    const ORDINARY_TOKENS: u32 = 199_998;
    let mut offsets = Vec::with_capacity(ORDINARY_TOKENS as usize + 1);
    let mut bytes = Vec::new();
    for rank in 0..ORDINARY_TOKENS {
        offsets.push(u32::try_from(bytes.len())?);
        let token = bpe
            .decode_bytes(&[rank])
            .map_err(|e| anyhow::anyhow!("o200k_base has no token of rank {rank}: {e:?}"))?;
        anyhow::ensure!(!token.is_empty(), "o200k_base token {rank} is empty");
        bytes.extend_from_slice(&token);
    }
    offsets.push(u32::try_from(bytes.len())?);
    // The counter relies on every single byte being a token of its own
    // (byte-level BPE), and on the table ending where the specials begin.
    anyhow::ensure!(
        bpe.decode_bytes(&[ORDINARY_TOKENS]).is_err(),
        "o200k_base has more ordinary tokens than {ORDINARY_TOKENS}"
    );

    let mut out = Vec::with_capacity(4 * (offsets.len() + 1) + bytes.len());
    out.extend_from_slice(&ORDINARY_TOKENS.to_le_bytes());
    for offset in &offsets {
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.extend_from_slice(&bytes);
    let path = PathBuf::from(std::env::var("OUT_DIR")?).join("o200k_base.ranks");
    std::fs::write(&path, out)?;
    Ok(())
}
