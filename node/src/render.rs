//! Writing masks and overlays: PNG encoding, legend drawing, atomic file writes, and how ovseg
//! recognises its own outputs for the checks of `engine::outputs`.
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use engine::outputs::{OutputError, OutputKind};
use engine::{Frame, LabelMap, LabelSet, MaskPixels};
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

/// What ovseg writes into its PNGs (tEXt `Software`) and JSON reports (`software`), so that a
/// later run can tell its own outputs, which it may replace, from a user's files.
pub const SOFTWARE: &str = concat!("ovseg ", env!("CARGO_PKG_VERSION"));
const SOFTWARE_PREFIX: &str = "ovseg ";

/// Writes the label-id mask: 8-bit with up to 255 labels, else 16-bit. Returns the bit depth.
pub fn write_mask(map: &LabelMap, num_labels: usize, path: &Path) -> Result<u8> {
    let (w, h) = (map.width, map.height);
    let (png, bits) = match map.mask_pixels(num_labels) {
        MaskPixels::Mono8(data) => (encode_png(w, h, png::ColorType::Grayscale, png::BitDepth::Eight, &data, &[])?, 8),
        MaskPixels::Mono16(data) => {
            // PNG stores 16-bit samples big-endian.
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_be_bytes()).collect();
            (encode_png(w, h, png::ColorType::Grayscale, png::BitDepth::Sixteen, &bytes, &[])?, 16)
        }
    };
    write_file(path, &png)?;
    Ok(bits)
}

pub fn save_rgb(img: &RgbImage, path: &Path) -> Result<()> {
    save_rgb_with(img, path, &[])
}

/// [`save_rgb`] for the picture of PFM files written after it (`(path, bytes)`): it records
/// each one's fingerprint, which is how a later run knows those PFMs are ovseg's (a PFM has no
/// room for a marker of its own).
pub fn save_rgb_with(img: &RgbImage, path: &Path, pfms: &[(&Path, &[u8])]) -> Result<()> {
    let records: Vec<String> = pfms.iter().map(|(pfm, bytes)| pfm_record(pfm, bytes)).collect();
    let png = encode_png(img.width(), img.height(), png::ColorType::Rgb, png::BitDepth::Eight, img.as_raw(), &records)?;
    write_file(path, &png)
}

/// tEXt keyword of a PFM's fingerprint in the picture written with it.
const PFM_KEYWORD: &str = "ovseg-pfm";

/// `<file name> <length> <hash>`, as the picture written with a PFM records it.
fn pfm_record(pfm: &Path, bytes: &[u8]) -> String {
    format!("{} {}", pfm.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), fingerprint(bytes))
}

/// Length and 64-bit FNV-1a hash: enough to tell our file from one put in its place (written
/// out: one line, where a hash crate would be a dependency for it).
fn fingerprint(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{} {hash:016x}", bytes.len())
}

/// A PNG with the `Software` text chunk that marks it as ovseg's (and `records` of PFMs); the
/// same compression and filter as the `image` crate's default encoder.
fn encode_png(width: u32, height: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8], records: &[String]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Adaptive);
    encoder.add_text_chunk("Software".into(), SOFTWARE.into()).context("PNG text chunk")?;
    for record in records {
        encoder.add_text_chunk(PFM_KEYWORD.into(), record.clone()).context("PNG text chunk")?;
    }
    let mut writer = encoder.write_header().context("encoding PNG")?;
    writer.write_image_data(data).context("encoding PNG")?;
    writer.finish().context("encoding PNG")?;
    Ok(out)
}

/// Marks a JSON report as ovseg's, of `kind` (the command that wrote it).
pub fn stamp(report: &mut serde_json::Value, kind: &str) {
    report["software"] = serde_json::json!(SOFTWARE);
    report["report"] = serde_json::json!(kind);
}

/// Prints a JSON report to stdout and, if asked, writes it to a file too.
pub fn emit_json(report: &serde_json::Value, also_to: Option<&Path>) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    match also_to {
        Some(path) => write_file(path, text.as_bytes()),
        None => Ok(()),
    }
}

/// Temp file + rename: an interrupted run never leaves a half-written output behind.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    engine::labels::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// What an output path is meant to hold, which says how to recognise an earlier output of the
/// same kind that may be replaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Output<'a> {
    /// A PNG ovseg writes (mask, overlay, depth or disparity colours): tEXt `Software` = ovseg.
    Png,
    /// A JSON report of this kind: `software` = ovseg and `report` = the kind.
    Report(&'a str),
    /// A PFM, which has no room for a marker: the ovseg PNG written with it (always before it,
    /// by [`save_rgb_with`]) must hold its fingerprint.
    Pfm { companion: &'a Path },
    /// A binary file that starts with this magic (cost-map fixtures).
    Magic(&'a [u8]),
}

impl OutputKind for Output<'_> {
    const WRITER: &'static str = "ovseg";

    fn describe(self) -> String {
        match self {
            Output::Png => "a PNG".into(),
            Output::Report(kind) => format!("a report of ovseg {kind}"),
            Output::Pfm { companion } => format!("a PFM recorded in {}", companion.display()),
            Output::Magic(_) => "a cost-map fixture".into(),
        }
    }

    fn recognises(self, path: &Path) -> bool {
        written_by_ovseg(path, self)
    }
}

/// The inputs and outputs of one command (see [`engine::outputs`]).
pub type Outputs<'a> = engine::outputs::Outputs<Output<'a>>;

/// Whether `path` holds a file ovseg wrote as `kind`. Anything unreadable is not.
pub fn written_by_ovseg(path: &Path, kind: Output<'_>) -> bool {
    match kind {
        Output::Png => png_text(path, "Software").first().is_some_and(|s| s.starts_with(SOFTWARE_PREFIX)),
        Output::Report(kind) => engine::outputs::json_object(path).is_some_and(|o| {
            o.get("software").and_then(|s| s.as_str()).is_some_and(|s| s.starts_with(SOFTWARE_PREFIX)) && o.get("report").is_some_and(|r| r == kind)
        }),
        Output::Pfm { companion } => {
            let Ok(bytes) = std::fs::read(path) else { return false };
            let record = pfm_record(path, &bytes);
            written_by_ovseg(companion, Output::Png) && png_text(companion, PFM_KEYWORD).contains(&record)
        }
        Output::Magic(magic) => {
            let mut head = vec![0; magic.len()];
            std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == magic
        }
    }
}

/// The tEXt entries of a PNG under `keyword` (read up to the image data, not decoded); none
/// for anything that is not a readable PNG.
fn png_text(path: &Path, keyword: &str) -> Vec<String> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let Ok(reader) = png::Decoder::new(BufReader::new(file)).read_info() else { return Vec::new() };
    reader.info().uncompressed_latin1_text.iter().filter(|t| t.keyword == keyword).map(|t| t.text.clone()).collect()
}

/// `--json FILE` of a command that writes a report of `kind`, among the command's `outputs`:
/// checked before the command does its work.
pub fn check_json_out(outputs: &mut Outputs<'_>, path: Option<&Path>, kind: &'static str) -> Result<(), OutputError> {
    match path {
        Some(path) => outputs.file(path, "--json", Output::Report(kind)),
        None => Ok(()),
    }
}

/// Fails early, naming the folder, when `dir` cannot be created or written, so that a run does
/// not do its work first. Leaves nothing behind: a missing folder is not created here, its
/// nearest existing parent is tried instead (with a file created and removed at once).
pub fn check_out_dir(dir: &Path) -> Result<()> {
    let mut existing = dir.to_path_buf();
    loop {
        match std::fs::metadata(&existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if existing == dir => bail!("{} is not a folder", dir.display()),
            Ok(_) => bail!("{} cannot be made: {} is not a folder", dir.display(), existing.display()),
            // Under a file, the path is "not a directory" rather than missing: walk up to the file.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                let parent = match existing.parent() {
                    Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
                    Some(p) => p.to_path_buf(),
                    None => bail!("{} cannot be made: {}: {e}", dir.display(), existing.display()),
                };
                if parent == existing {
                    bail!("{} cannot be made: {}: {e}", dir.display(), existing.display());
                }
                existing = parent;
            }
            Err(e) => bail!("{}: {e}", existing.display()),
        }
    }
    let probe = existing.join(format!(".ovseg-write-test.{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if existing == dir => bail!("{} is not writable: {e}", dir.display()),
        Err(e) => bail!("{} cannot be made: {} is not writable: {e}", dir.display(), existing.display()),
    }
}

const GLYPH: u32 = 8;
const TEXT_SCALE: u32 = 2;
const ROW: u32 = GLYPH * TEXT_SCALE + 6;
const LEGEND_ROWS: usize = 12;
const MIN_LEGEND_WIDTH: u32 = 360;

/// The frame with label colours blended in, and a legend of the labels present (largest first)
/// below it.
pub fn overlay_with_legend(frame: &Frame, map: &LabelMap, labels: &LabelSet) -> RgbImage {
    let (w, h) = (frame.width, frame.height);
    let blended = map.overlay(&frame.to_rgb8(), &labels.colors, 0.5);
    let (shares, unknown) = map.shares(labels.len());
    let mut present: Vec<(Option<usize>, f64)> =
        shares.iter().copied().enumerate().filter(|(_, s)| *s > 0.0).map(|(k, s)| (Some(k), s)).collect();
    if unknown > 0.0 {
        present.push((None, unknown));
    }
    present.sort_by(|a, b| b.1.total_cmp(&a.1));
    let hidden = present.len().saturating_sub(LEGEND_ROWS);
    present.truncate(LEGEND_ROWS);

    let rows = present.len() as u32 + u32::from(hidden > 0);
    let legend_h = rows * ROW + 6;
    // Narrow frames get a wider canvas so legend text is not cut off.
    let mut img = RgbImage::from_pixel(w.max(MIN_LEGEND_WIDTH), h + legend_h, Rgb([24, 24, 24]));
    for (i, px) in blended.chunks_exact(3).enumerate() {
        img.put_pixel(i as u32 % w, i as u32 / w, Rgb([px[0], px[1], px[2]]));
    }
    for (row, (label, share)) in present.iter().enumerate() {
        let y = h + 4 + row as u32 * ROW;
        let (color, name) = match label {
            Some(k) => (labels.colors[*k], labels.names[*k].as_str()),
            None => (engine::colors::UNKNOWN_COLOR, "unknown"),
        };
        fill_rect(&mut img, 4, y, GLYPH * TEXT_SCALE, GLYPH * TEXT_SCALE, Rgb(color), Rgb([200, 200, 200]));
        draw_text(&mut img, 4 + GLYPH * TEXT_SCALE + 8, y, &format!("{name} {:.1}%", share * 100.0));
    }
    if hidden > 0 {
        draw_text(&mut img, 4, h + 4 + present.len() as u32 * ROW, &format!("+{hidden} more"));
    }
    img
}

fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, fill: Rgb<u8>, border: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            let edge = yy == y || xx == x || yy + 1 == y + h || xx + 1 == x + w;
            img.put_pixel(xx, yy, if edge { border } else { fill });
        }
    }
}

/// 8x8 bitmap glyphs scaled up; characters the font lacks are drawn as '?'.
fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str) {
    let fonts = [font8x8::BASIC_FONTS.iter().collect::<Vec<_>>(), font8x8::LATIN_FONTS.iter().collect::<Vec<_>>()];
    let mut cx = x;
    for ch in text.chars() {
        let glyph = fonts
            .iter()
            .find_map(|f| f.iter().find(|g| g.char() == ch).map(|g| g.byte_array()))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..GLYPH {
                if bits & (1 << gx) == 0 {
                    continue;
                }
                for sy in 0..TEXT_SCALE {
                    for sx in 0..TEXT_SCALE {
                        let (px, py) = (cx + gx * TEXT_SCALE + sx, y + gy as u32 * TEXT_SCALE + sy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb([240, 240, 240]));
                        }
                    }
                }
            }
        }
        cx += GLYPH * TEXT_SCALE;
        if cx >= img.width() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::UNKNOWN;

    fn map(labels: Vec<u16>) -> LabelMap {
        let n = labels.len();
        LabelMap { width: n as u32, height: 1, labels, confidence: vec![1.0; n] }
    }

    #[test]
    fn mask_depth_switches_at_256_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        assert_eq!(write_mask(&map(vec![0, 254, UNKNOWN]), 255, &p).unwrap(), 8);
        let img = image::open(&p).unwrap().to_luma8();
        assert_eq!(img.as_raw(), &vec![0, 254, 255]);
        assert_eq!(write_mask(&map(vec![0, 255, UNKNOWN]), 256, &p).unwrap(), 16);
        let img = image::open(&p).unwrap().to_luma16();
        assert_eq!(img.as_raw(), &vec![0, 255, 65535]);
        assert!(written_by_ovseg(&p, Output::Png));
    }

    #[test]
    fn outputs_are_recognised_by_their_marker_and_foreign_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let png = d.join("a.overlay.png");
        save_rgb(&RgbImage::new(3, 2), &png).unwrap();
        assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (3, 2));
        assert!(written_by_ovseg(&png, Output::Png));
        let theirs = d.join("theirs.png");
        RgbImage::new(3, 2).save(&theirs).unwrap();
        assert!(!written_by_ovseg(&theirs, Output::Png));

        let pfm = d.join("a.depth.pfm");
        let ours = crate::stereo::pfm_bytes(&engine::stereo::Disparity { width: 3, height: 2, data: vec![1.0; 6] });
        save_rgb_with(&RgbImage::new(3, 2), &png, &[(&pfm, &ours)]).unwrap();
        assert!(written_by_ovseg(&png, Output::Png));
        std::fs::write(&pfm, &ours).unwrap();
        assert!(written_by_ovseg(&pfm, Output::Pfm { companion: &png }));
        assert!(!written_by_ovseg(&pfm, Output::Pfm { companion: &theirs }), "the companion must be ours too");
        // Another PFM in its place, header and size alike (a ground truth, say).
        let other = crate::stereo::pfm_bytes(&engine::stereo::Disparity { width: 3, height: 2, data: vec![2.0; 6] });
        std::fs::write(&pfm, other).unwrap();
        assert!(!written_by_ovseg(&pfm, Output::Pfm { companion: &png }));

        let mut report = serde_json::json!({"mean_miou": 0.5});
        stamp(&mut report, "eval");
        let json = d.join("r.json");
        std::fs::write(&json, report.to_string()).unwrap();
        assert!(written_by_ovseg(&json, Output::Report("eval")));
        assert!(!written_by_ovseg(&json, Output::Report("bench")), "another command's report");
        std::fs::write(&json, r#"{"images": []}"#).unwrap();
        assert!(!written_by_ovseg(&json, Output::Report("eval")));

        // Through the shared checks: only the foreign file is refused, and --force replaces it.
        let planned = || [(theirs.clone(), Output::Png), (png.clone(), Output::Png)];
        let e = Outputs::new(false).files("--out", planned()).unwrap_err().to_string();
        assert!(e.contains("theirs.png exists and is not a PNG") && !e.contains("a.overlay.png") && e.contains("--force"), "{e}");
        Outputs::new(true).files("--out", planned()).unwrap();
    }

    #[test]
    fn the_out_folder_is_checked_without_being_made() {
        let dir = tempfile::tempdir().unwrap();
        check_out_dir(&dir.path().join("a/b/c")).unwrap();
        assert!(!dir.path().join("a").exists());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = check_out_dir(&file).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let e = check_out_dir(&file.join("sub")).unwrap_err().to_string();
        assert!(e.contains("cannot be made") && e.contains("file is not a folder"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no probe file left behind");
    }

    #[test]
    fn legend_lists_present_labels_under_the_image() {
        let frame = Frame::packed(64, 2, engine::PixelFormat::Mono8, vec![100; 128]).unwrap();
        let labels = LabelSet {
            names: vec!["weed".into(), "soil".into(), "sky".into()],
            embeddings: vec![0.0; 3],
            dim: 1,
            colors: vec![[255, 0, 0], [0, 255, 0], [0, 0, 255]],
            gain: vec![1.0; 3],
            bias: vec![0.0; 3],
        };
        let mut ids = vec![0u16; 128];
        ids[..10].iter_mut().for_each(|l| *l = 1);
        let m = LabelMap { width: 64, height: 2, labels: ids, confidence: vec![1.0; 128] };
        let img = overlay_with_legend(&frame, &m, &labels);
        assert_eq!(img.width(), MIN_LEGEND_WIDTH);
        assert_eq!(img.height(), 2 + 2 * ROW + 6); // two labels present, "sky" absent
        // blended weed pixel: (100 + 255) / 2
        assert_eq!(img.get_pixel(63, 0), &Rgb([178, 50, 50]));
        // first legend swatch is the larger label (weed)
        assert_eq!(img.get_pixel(8, 2 + 4 + 8), &Rgb([255, 0, 0]));
    }
}
