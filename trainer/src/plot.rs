//! Loss and validation curves as a PNG. plotters draws into a memory buffer with an embedded
//! font (DejaVu Sans, via ab_glyph), so no system font libraries are needed.
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::checkpoint::HistoryPoint;

const FONT: &[u8] = include_bytes!("../data/fonts/DejaVuSans.ttf");
/// Size of one panel.
const PANEL: (u32, u32) = (480, 360);
const ORANGE: RGBColor = RGBColor(230, 140, 0);

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok()) {
        Ok(())
    } else {
        Err(anyhow!("the embedded font does not load"))
    }
}

/// Panels side by side: training (smoothed) and validation loss; validation cell accuracy and
/// mIoU; with a depth head, the validation depth's AbsRel and share within a factor 1.25.
pub fn write_curves(path: &Path, history: &[HistoryPoint]) -> Result<()> {
    ensure_font()?;
    let size = image_size(history);
    let mut pixels = vec![0u8; (size.0 * size.1 * 3) as usize];
    draw(&mut pixels, size, history).map_err(|e| anyhow!("drawing the curves: {e}"))?;
    let image = image::RgbImage::from_raw(size.0, size.1, pixels).context("curve buffer size")?;
    image.save(path).with_context(|| format!("writing {}", path.display()))
}

fn has_depth(history: &[HistoryPoint]) -> bool {
    history.iter().any(|h| h.val_depth.is_some())
}

fn image_size(history: &[HistoryPoint]) -> (u32, u32) {
    let panels = if has_depth(history) { 3 } else { 2 };
    (PANEL.0 * panels, PANEL.1)
}

fn draw(pixels: &mut [u8], size: (u32, u32), history: &[HistoryPoint]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE)?;
    let last_step = history.last().map_or(1, |h| h.step).max(1) as f64;
    let max_loss = history.iter().flat_map(|h| [h.train_loss.unwrap_or(f64::NAN), h.val_loss]).filter(|v| v.is_finite()).fold(0.1f64, f64::max) * 1.1;
    type Curve = (&'static str, RGBColor, fn(&HistoryPoint) -> f64);
    let mut panels: Vec<(&str, f64, [Curve; 2])> = vec![
        ("loss", max_loss, [("train (smoothed)", BLUE, |h| h.train_loss.unwrap_or(f64::NAN)), ("validation", RED, |h| h.val_loss)]),
        ("validation cells", 1.0, [("accuracy", GREEN, |h| h.val_cell_accuracy), ("mIoU", MAGENTA, |h| h.val_cell_miou)]),
    ];
    if has_depth(history) {
        let top = history.iter().filter_map(|h| h.val_depth).map(|d| d.abs_rel).fold(1.0f64, f64::max) * 1.05;
        panels.push((
            "validation depth",
            top,
            [("AbsRel", CYAN, |h| h.val_depth.map_or(f64::NAN, |d| d.abs_rel)), ("within 1.25x", ORANGE, |h| h.val_depth.map_or(f64::NAN, |d| d.delta1))],
        ));
    }
    let areas = root.split_evenly((1, panels.len()));
    for (area, (title, top, curves)) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..last_step, 0f64..top)?;
        chart.configure_mesh().x_desc("step").x_label_formatter(&|x| format!("{x:.0}")).max_light_lines(2).draw()?;
        for (name, colour, value) in curves {
            let points = history.iter().map(|h| (h.step as f64, value(h))).filter(|(_, v)| v.is_finite());
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_drawn_with_every_series() {
        let mut history: Vec<HistoryPoint> = (1..=6)
            .map(|i| HistoryPoint {
                step: i * 10,
                train_loss: Some(1.0 / i as f64),
                val_loss: 1.2 / i as f64,
                val_cell_accuracy: 0.5 + 0.05 * i as f64,
                val_cell_miou: 0.3 + 0.05 * i as f64,
                val_depth: None,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        write_curves(&path, &history).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (2 * PANEL.0, PANEL.1));
        let count = |image: &image::RgbImage, colour: RGBColor| image.pixels().filter(|p| p.0 == [colour.0, colour.1, colour.2]).count();
        for colour in [BLUE, RED, GREEN, MAGENTA] {
            assert!(count(&image, colour) > 50, "{colour:?}: {} pixels", count(&image, colour));
        }
        assert_eq!(count(&image, ORANGE), 0, "no depth panel without depth");
        // With a depth head, a third panel.
        for (i, h) in history.iter_mut().enumerate() {
            h.val_depth = Some(crate::checkpoint::DepthScore { abs_rel: 0.8 / (i + 1) as f64, delta1: 0.1 * (i + 1) as f64 });
        }
        write_curves(&path, &history).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (3 * PANEL.0, PANEL.1));
        for colour in [CYAN, ORANGE] {
            assert!(count(&image, colour) > 50, "{colour:?}: {} pixels", count(&image, colour));
        }
        // Text was rendered: dark anti-aliased glyph pixels exist besides the black frame lines.
        let grey = image.pixels().filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && (40..200).contains(&p.0[0])).count();
        assert!(grey > 200, "{grey} grey pixels");
    }
}
