//! Encodes one message of every kind, decodes them back from one stream and
//! prints what arrived. With `--write-corpus DIR`, also writes the fuzz seed
//! corpora (`DIR/decode_frame`, `DIR/validate_message`).

use allot_wire::samples::all_frames;
use allot_wire::FrameDecoder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let frames = all_frames();
    let mut dec = FrameDecoder::default();
    for (_, b) in &frames {
        dec.feed(b);
    }
    println!(
        "{:<14} {:>6} {:>6} {:>8}",
        "kind", "frame", "body", "payload"
    );
    while let Some(f) = dec.next_frame()? {
        f.kind().validate(f.body())?;
        let h = f.header();
        println!(
            "{:<14} {:>6} {:>6} {:>8}",
            format!("{:?}", h.kind),
            f.as_bytes().len(),
            h.body_len,
            h.payload_len
        );
    }
    dec.finish()?;

    let mut args = std::env::args().skip(1);
    if let (Some(flag), Some(dir)) = (args.next(), args.next()) {
        if flag != "--write-corpus" {
            return Err(format!("unknown flag {flag}; expected --write-corpus DIR").into());
        }
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir.join("decode_frame"))?;
        std::fs::create_dir_all(dir.join("validate_message"))?;
        for (i, (kind, b)) in frames.iter().enumerate() {
            let name = format!("seed-{:02}-{:?}", i, kind).to_lowercase();
            // decode_frame: first byte is the read size.
            let mut d = vec![13u8];
            d.extend_from_slice(b);
            std::fs::write(dir.join("decode_frame").join(&name), d)?;
            // validate_message: first byte is the kind index, then the body.
            let body_len = u32::from_le_bytes(b[4..8].try_into()?) as usize;
            let mut v = vec![i as u8];
            v.extend_from_slice(&b[16..16 + body_len]);
            std::fs::write(dir.join("validate_message").join(&name), v)?;
        }
        // A stream of all frames back to back, read in small pieces.
        let mut all = vec![5u8];
        for (_, b) in &frames {
            all.extend_from_slice(b);
        }
        std::fs::write(dir.join("decode_frame").join("seed-stream"), all)?;
        println!(
            "wrote {} seeds per target under {}",
            frames.len(),
            dir.display()
        );
    }
    Ok(())
}
