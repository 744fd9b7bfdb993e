//! ADE20K, Cityscapes and Pascal VOC layouts read in place, on small sets written here in each
//! layout's own file conventions (the real data sets are not available to the tests).
use std::path::Path;

use image::{GrayImage, Luma};
use trainer::data::{IGNORE, Split};
use trainer::layouts::voc_colour;
use trainer::synth;

const SCENE: (u32, u32) = (64, 48);

/// A synthetic scene whose mask is re-coded by `code` (synthetic class id -> raw value).
fn scene(seed: u64, code: impl Fn(u8) -> u8) -> (image::RgbImage, GrayImage, GrayImage) {
    let s = synth::scene(seed, SCENE.0, SCENE.1);
    let raw = GrayImage::from_fn(SCENE.0, SCENE.1, |x, y| Luma([code(s.mask.get_pixel(x, y).0[0])]));
    (s.image, s.mask, raw)
}

fn write(path: &Path, f: impl FnOnce(&Path)) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    f(path);
}

/// Asserts the loaded mask is the scene's, through the split's label names.
fn check(split: &Split, i: usize, truth: &GrayImage, truth_names: &[&str]) {
    let loaded = split.load(i).unwrap();
    for (loaded, truth) in loaded.mask.pixels().zip(truth.pixels()) {
        let expected = truth_names.get(usize::from(truth.0[0])).copied();
        let got = split.labels.get(usize::from(loaded.0[0])).map(String::as_str);
        assert_eq!(got, expected, "split labels {:?}", split.labels);
    }
}

#[test]
fn ade20k_reads_object_info_and_ignores_other() {
    let root = tempfile::tempdir().unwrap();
    let ade = root.path().join("ADEChallengeData2016");
    write(&ade.join("objectInfo150.csv"), |p| {
        std::fs::write(p, "Idx,Ratio,Train,Val,Name\n1,0.2,10,2,sky\n2,0.1,9,1,grass;lawn\n3,0.05,5,1,gravel path\n").unwrap()
    });
    // ADE codes class i as i + 1 and "other" as 0: brick wall (3) becomes other.
    let (image, mask, raw) = scene(4, |c| if c == 3 { 0 } else { c + 1 });
    for split in ["training", "validation"] {
        write(&ade.join(format!("images/{split}/ADE_x_1.jpg")), |p| image.save(p).unwrap());
        write(&ade.join(format!("annotations/{split}/ADE_x_1.png")), |p| raw.save(p).unwrap());
    }
    let train = Split::folders(std::slice::from_ref(&ade)).unwrap();
    assert_eq!(train.labels, ["sky", "grass", "gravel path"]);
    assert_eq!(train.len(), 1);
    check(&train, 0, &mask, &["sky", "grass", "gravel path"]);
    let val = Split::folders(&[root.path().join("ADEChallengeData2016#validation")]).unwrap();
    assert_eq!(val.len(), 1);
    let err = Split::folders(&[root.path().join("ADEChallengeData2016#test")]).unwrap_err().to_string();
    assert!(err.contains("images/test") && err.contains("cannot list"), "{err}");
}

#[test]
fn cityscapes_maps_label_ids_to_the_19_classes() {
    let root = tempfile::tempdir().unwrap();
    let cs = root.path().join("cityscapes");
    // sky -> 23 (sky), grass -> 22 (terrain), gravel path -> 7 (road), brick wall -> 9 (parking, ignored).
    let ids = [23u8, 22, 7, 9];
    let seed = (5..).find(|&s| synth::scene(s, SCENE.0, SCENE.1).mask.pixels().any(|p| p.0[0] == 3)).unwrap();
    let (image, mask, raw) = scene(seed, |c| ids[usize::from(c)]);
    write(&cs.join("leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png"), |p| image.save(p).unwrap());
    write(&cs.join("gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds.png"), |p| raw.save(p).unwrap());
    let split = Split::folders(std::slice::from_ref(&cs)).unwrap();
    assert_eq!(split.labels.len(), 19);
    assert_eq!(split.len(), 1);
    check(&split, 0, &mask, &["sky", "terrain", "road"]);
    let loaded = split.load(0).unwrap();
    let brick = mask.pixels().zip(loaded.mask.pixels()).filter(|(t, _)| t.0[0] == 3);
    assert!(brick.clone().count() > 0 && brick.into_iter().all(|(_, l)| l.0[0] == IGNORE), "parking is ignored");
}

#[test]
fn voc_reads_indexed_palette_masks() {
    let root = tempfile::tempdir().unwrap();
    let voc = root.path().join("VOC2012");
    // Re-coded as VOC classes: sky -> background (0), grass -> potted plant (16),
    // gravel path -> train (19), brick wall -> void (255).
    let classes = [0u8, 16, 19, IGNORE];
    let (image, mask, raw) = scene(6, |c| classes[usize::from(c)]);
    write(&voc.join("JPEGImages/2007_000033.jpg"), |p| image.save(p).unwrap());
    write(&voc.join("ImageSets/Segmentation/train.txt"), |p| std::fs::write(p, "2007_000033\n").unwrap());
    write(&voc.join("SegmentationClass/2007_000033.png"), |p| {
        // An 8-bit indexed PNG with the VOC palette, as the data set ships them.
        let file = std::io::BufWriter::new(std::fs::File::create(p).unwrap());
        let mut encoder = png::Encoder::new(file, SCENE.0, SCENE.1);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette((0..=255u8).flat_map(voc_colour).collect::<Vec<u8>>());
        encoder.write_header().unwrap().write_image_data(raw.as_raw()).unwrap();
    });
    let split = Split::folders(std::slice::from_ref(&voc)).unwrap();
    assert_eq!(split.labels.len(), 21);
    assert_eq!(split.labels[16], "potted plant");
    check(&split, 0, &mask, &["background", "potted plant", "train"]);
}
