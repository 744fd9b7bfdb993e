//! Loss and validation curves as a PNG. plotters draws into a memory buffer with an embedded
//! font (DejaVu Sans, via ab_glyph), so no system font libraries are needed.
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::checkpoint::HistoryPoint;

const FONT: &[u8] = include_bytes!("../data/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (960, 360);

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok()) {
        Ok(())
    } else {
        Err(anyhow!("the embedded font does not load"))
    }
}

/// Left: training (smoothed) and validation loss; right: validation cell accuracy and mIoU.
pub fn write_curves(path: &Path, history: &[HistoryPoint]) -> Result<()> {
    ensure_font()?;
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(&mut pixels, history).map_err(|e| anyhow!("drawing the curves: {e}"))?;
    let image = image::RgbImage::from_raw(SIZE.0, SIZE.1, pixels).context("curve buffer size")?;
    image.save(path).with_context(|| format!("writing {}", path.display()))
}

fn draw(pixels: &mut [u8], history: &[HistoryPoint]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let last_step = history.last().map_or(1, |h| h.step).max(1) as f64;
    let max_loss = history.iter().flat_map(|h| [h.train_loss.unwrap_or(f64::NAN), h.val_loss]).filter(|v| v.is_finite()).fold(0.1f64, f64::max) * 1.1;
    type Curve = (&'static str, RGBColor, fn(&HistoryPoint) -> f64);
    let panels: [(&DrawingArea<BitMapBackend, _>, &str, f64, [Curve; 2]); 2] = [
        (&left, "loss", max_loss, [("train (smoothed)", BLUE, |h| h.train_loss.unwrap_or(f64::NAN)), ("validation", RED, |h| h.val_loss)]),
        (&right, "validation cells", 1.0, [("accuracy", GREEN, |h| h.val_cell_accuracy), ("mIoU", MAGENTA, |h| h.val_cell_miou)]),
    ];
    for (area, title, top, curves) in panels {
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
        let history: Vec<HistoryPoint> = (1..=6)
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
        assert_eq!(image.dimensions(), SIZE);
        for colour in [BLUE, RED, GREEN, MAGENTA] {
            let n = image.pixels().filter(|p| p.0 == [colour.0, colour.1, colour.2]).count();
            assert!(n > 50, "{colour:?}: {n} pixels");
        }
        // Text was rendered: dark anti-aliased glyph pixels exist besides the black frame lines.
        let grey = image.pixels().filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && (40..200).contains(&p.0[0])).count();
        assert!(grey > 200, "{grey} grey pixels");
    }
}
