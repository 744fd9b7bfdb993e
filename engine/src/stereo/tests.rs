//! End-to-end tests of the matcher on synthetic pairs with known disparity.
use super::*;

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Random-dot pair with disparity `d` everywhere: left(x) = right(x - d).
fn constant_pair(w: usize, h: usize, d: usize) -> (Vec<u8>, Vec<u8>) {
    let right = noise(w * h, 1);
    let fill = noise(w * h, 2);
    let left = (0..w * h).map(|i| if i % w >= d { right[i - d] } else { fill[i] }).collect();
    (left, right)
}

/// Background at disparity 4, a textured square at disparity 12 in front of it. Returns the
/// pair and the left pixels whose background is hidden from the right camera by the square.
fn occlusion_scene(w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<bool>) {
    let (bg, fg) = (noise((w + 16) * h, 3), noise((w + 16) * h, 4));
    let (x0, x1, y0, y1) = (60, 110, 30, 70);
    let in_square = |x: usize, y: usize| (x0..x1).contains(&x) && (y0..y1).contains(&y);
    let mut left = vec![0; w * h];
    let mut right = vec![0; w * h];
    let mut occluded = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            left[y * w + x] = if in_square(x, y) { fg[y * (w + 16) + x] } else { bg[y * (w + 16) + x] };
            right[y * w + x] = if in_square(x + 12, y) { fg[y * (w + 16) + x + 12] } else { bg[y * (w + 16) + x + 4] };
            // Background seen at right column x - 4, where the square now is.
            occluded[y * w + x] = !in_square(x, y) && x >= 4 && in_square(x - 4 + 12, y);
        }
    }
    (left, right, occluded)
}

fn view(w: usize, h: usize, px: &[u8]) -> GrayView<'_> {
    GrayView { width: w, height: h, pixels: px }
}

fn params(max_disp: usize) -> StereoParams {
    StereoParams { max_disp, ..StereoParams::default() }
}

/// Share of `pixels` (indices) whose rounded disparity is `want` (invalid counts as wrong).
fn share_equal(disp: &Disparity, pixels: impl Iterator<Item = usize>, want: f32) -> f64 {
    let (mut hit, mut n) = (0usize, 0usize);
    for i in pixels {
        n += 1;
        hit += usize::from((disp.data[i] + 0.5).floor() == want);
    }
    hit as f64 / n as f64
}

#[test]
fn random_dots_at_constant_disparity_are_recovered() {
    let (w, h, d) = (200, 120, 7);
    let (l, r) = constant_pair(w, h, d);
    for paths in [Paths::Eight, Paths::Five, Paths::Four, Paths::Three] {
        let p = StereoParams { paths, ..params(32) };
        let disp = sgm(view(w, h, &l), view(w, h, &r), &p).unwrap();
        // Pixels whose match exists (x >= d). Measured 0.993 (8 paths), 0.994 (4 paths),
        // 0.992 (5 and 3 paths).
        let share = share_equal(&disp, (0..w * h).filter(|i| i % w >= d), d as f32);
        assert!(share > 0.98, "{paths:?}: {share}");
    }
}

#[test]
fn left_right_check_invalidates_occlusions() {
    let (w, h) = (160, 100);
    let (l, r, occluded) = occlusion_scene(w, h);
    let n_occ = occluded.iter().filter(|&&o| o).count();
    assert_eq!(n_occ, 8 * 40);
    let invalid_share = |d: &Disparity| (0..w * h).filter(|&i| occluded[i] && d.data[i].is_nan()).count() as f64 / n_occ as f64;

    let checked = sgm(view(w, h, &l), view(w, h, &r), &params(32)).unwrap();
    let unchecked = sgm(view(w, h, &l), view(w, h, &r), &StereoParams { lr_max_diff: None, uniqueness: 0, ..params(32) }).unwrap();
    let (with, without) = (invalid_share(&checked), invalid_share(&unchecked));
    // Measured: 0.84 with the check (the rest find a consistent wrong match), 0 without.
    assert!(with > 0.8, "occluded pixels invalidated by the check: {with}");
    assert!(without < 0.05, "without the check: {without}");
    // Visible pixels keep their disparity: the square's inside and the background left of it.
    let sq = (35..65).flat_map(|y| (65..105).map(move |x| y * w + x));
    assert!(share_equal(&checked, sq, 12.0) > 0.98);
    let bg = (0..h).flat_map(|y| (20..50).map(move |x| y * w + x));
    assert!(share_equal(&checked, bg, 4.0) > 0.98);
}

#[test]
fn a_single_label_is_neutral_and_borders_change_penalties() {
    let (w, h) = (160, 100);
    let (l, r, _) = occlusion_scene(w, h);
    for p in [params(32), StereoParams { p2_gradient: Some(8), paths: Paths::Four, ..params(32) }] {
        let mut m = StereoMatcher::new(p.clone()).unwrap();
        let (plain, _) = m.compute(view(w, h, &l), view(w, h, &r), None).unwrap();
        let same = vec![3u16; w * h];
        let (labeled, _) = m.compute(view(w, h, &l), view(w, h, &r), Some(&same)).unwrap();
        assert!(plain.data.iter().zip(&labeled.data).all(|(a, b)| a.to_bits() == b.to_bits()));
        // The hook is live: a label border in the middle with extreme border penalties.
        let split: Vec<u16> = (0..w * h).map(|i| u16::from(i % w >= w / 2)).collect();
        let p = StereoParams { label_border_p1: MAX_PENALTY, label_border_p2: MAX_PENALTY, ..p };
        let (bordered, _) = StereoMatcher::new(p).unwrap().compute(view(w, h, &l), view(w, h, &r), Some(&split)).unwrap();
        assert!(plain.data.iter().zip(&bordered.data).any(|(a, b)| a.to_bits() != b.to_bits()));
    }
}

#[test]
fn simd_and_portable_kernels_agree_exactly() {
    let (w, h) = (97, 61);
    let (l, r, _) = occlusion_scene(w, h);
    let labels: Vec<u16> = (0..w * h).map(|i| (i % w / 20) as u16).collect();
    let p = StereoParams { p2_gradient: Some(16), ..params(24) };
    let run = |isa| {
        let mut m = StereoMatcher::new(p.clone()).unwrap();
        m.isa = isa;
        m.compute(view(w, h, &l), view(w, h, &r), Some(&labels)).unwrap().0
    };
    let portable = run(Isa::Portable);
    for isa in Isa::available() {
        let simd = run(isa);
        assert!(portable.data.iter().zip(&simd.data).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa:?}");
    }
}

#[test]
fn bad_parameters_and_inputs_are_named() {
    let ok = StereoParams::default();
    ok.validate().unwrap();
    let cases: Vec<(StereoParams, &str)> = vec![
        (StereoParams { max_disp: 0, ..ok.clone() }, "`max_disp` = 0"),
        (StereoParams { max_disp: 60, ..ok.clone() }, "`max_disp` = 60"),
        (StereoParams { max_disp: 2048, ..ok.clone() }, "`max_disp` = 2048"),
        (StereoParams { census_width: 8, ..ok.clone() }, "`census_width` = 8"),
        (StereoParams { census_width: 11, ..ok.clone() }, "`census_width` = 11x7"),
        (StereoParams { census_height: 1, census_width: 1, ..ok.clone() }, "`census_width` = 1x1"),
        (StereoParams { p1: 200, ..ok.clone() }, "`p2` = 120"),
        (StereoParams { p2: 9000, ..ok.clone() }, "`p2` = 9000"),
        (StereoParams { label_border_p1: 40, ..ok.clone() }, "`label_border_p2` = 30"),
        (StereoParams { p2_gradient: Some(0), ..ok.clone() }, "`p2_gradient` = 0"),
        (StereoParams { uniqueness: 100, ..ok.clone() }, "`uniqueness` = 100"),
    ];
    for (p, want) in cases {
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
    let px = vec![0u8; 12];
    let e = sgm(view(4, 3, &px), view(3, 4, &px), &ok).unwrap_err().to_string();
    assert!(e.contains("`right` = 3x4") && e.contains("4x3"), "{e}");
    let e = sgm(view(4, 3, &px), view(4, 4, &px), &ok).unwrap_err().to_string();
    assert!(e.contains("`right` = 12 bytes"), "{e}");
    assert!(GrayView::new(0, 3, &[]).unwrap_err().to_string().contains("empty"));
    let e = StereoMatcher::new(ok).unwrap().compute(view(4, 3, &px), view(4, 3, &px), Some(&[0; 5])).unwrap_err().to_string();
    assert!(e.contains("`labels` = 5 entries"), "{e}");
}

#[test]
fn a_reused_matcher_gives_the_same_result_and_follows_size_changes() {
    let (l, r) = constant_pair(120, 50, 5);
    let (l2, r2, _) = occlusion_scene(160, 100);
    let mut m = StereoMatcher::new(params(32)).unwrap();
    let first = m.compute(view(120, 50, &l), view(120, 50, &r), None).unwrap().0;
    let other = m.compute(view(160, 100, &l2), view(160, 100, &r2), None).unwrap().0;
    let again = m.compute(view(120, 50, &l), view(120, 50, &r), None).unwrap().0;
    assert!(first.data.iter().zip(&again.data).all(|(a, b)| a.to_bits() == b.to_bits()));
    let fresh = sgm(view(160, 100, &l2), view(160, 100, &r2), &params(32)).unwrap();
    assert!(other.data.iter().zip(&fresh.data).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn tiny_images_work() {
    // Narrower than the census window and than the disparity range.
    let (l, r) = constant_pair(5, 3, 1);
    let d = sgm(view(5, 3, &l), view(5, 3, &r), &params(8)).unwrap();
    assert_eq!(d.data.len(), 15);
}

#[test]
fn matcher_for_picks_the_cpu_where_no_gpu_answers_and_says_why_cuda_cannot() {
    let params = StereoParams { max_disp: 16, ..StereoParams::default() };
    assert_eq!(super::matcher_for("cpu", &params).unwrap().device(), format!("cpu ({})", Isa::detect().name()));
    let e = super::matcher_for("bogus", &params).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("\"bogus\"") && e.contains("auto, cpu or cuda"), "{e}");
    // The image encoder's backends pick the matcher as `auto` does.
    for backend in ["tensorrt", "burn"] {
        assert!(super::matcher_for(backend, &params).is_ok(), "{backend}");
    }
    #[cfg(feature = "cuda")]
    if !crate::cuda::driver_present() {
        assert!(super::matcher_for("auto", &params).unwrap().is_cpu());
        let e = super::matcher_for("cuda", &params).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no CUDA driver"), "{e}");
    }
}

/// Semi-global matching written straight from its definition, one whole path after another,
/// with no reuse of the matcher's stages except the census transform (tested on its own): the
/// matcher's interleaved, row-by-row schedule must give exactly this.
fn reference_sgm(left: &[u8], right: &[u8], w: usize, h: usize, p: &StereoParams, labels: Option<&[u16]>) -> Vec<f32> {
    let nd = p.max_disp;
    let codes = |img: &[u8]| {
        let mut c = vec![0; w * h];
        census::census(Isa::Portable, view(w, h, img), p.census_width, p.census_height, &mut c);
        c
    };
    let (cl, cr) = (codes(left), codes(right));
    let cost = |x: usize, y: usize, d: usize| if d > x { p.census_bits() } else { (cl[y * w + x] ^ cr[y * w + x - d]).count_ones() };
    let penalties = |a: usize, b: usize| -> (u32, u32) {
        if labels.is_some_and(|l| l[a] != l[b]) {
            return (p.label_border_p1.into(), p.label_border_p2.into());
        }
        let p2 = match p.p2_gradient {
            None => u32::from(p.p2),
            Some(g) => (u32::from(p.p2) * u32::from(g) / (u32::from(g) + u32::from(left[a].abs_diff(left[b])))).max(p.p1.into()),
        };
        (p.p1.into(), p2)
    };
    // Predecessor offsets (dx, dy): left-right, right-left, from above, its diagonals, from
    // below, its diagonals.
    let dirs: &[(isize, isize)] = match p.paths {
        Paths::Three => &[(-1, 0), (1, 0), (0, -1)],
        Paths::Four => &[(-1, 0), (1, 0), (0, -1), (0, 1)],
        Paths::Five => &[(-1, 0), (1, 0), (0, -1), (-1, -1), (1, -1)],
        Paths::Eight => &[(-1, 0), (1, 0), (0, -1), (-1, -1), (1, -1), (0, 1), (-1, 1), (1, 1)],
    };
    let mut sum = vec![0u32; w * h * nd];
    for &(dx, dy) in dirs {
        let mut path = vec![0u32; w * h * nd];
        // Visit order: every predecessor before its pixel.
        let ys: Vec<usize> = if dy > 0 { (0..h).rev().collect() } else { (0..h).collect() };
        let xs: Vec<usize> = if dx > 0 { (0..w).rev().collect() } else { (0..w).collect() };
        for &y in &ys {
            for &x in &xs {
                let (qx, qy) = (x as isize + dx, y as isize + dy);
                let at = (y * w + x) * nd;
                if qx < 0 || qy < 0 || qx >= w as isize || qy >= h as isize {
                    (0..nd).for_each(|d| path[at + d] = cost(x, y, d));
                    continue;
                }
                let q = qy as usize * w + qx as usize;
                let (p1, p2) = penalties(y * w + x, q);
                let prev = path[q * nd..][..nd].to_vec();
                let prev_min = *prev.iter().min().unwrap();
                for d in 0..nd {
                    let mut best = prev[d].min(prev_min + p2);
                    if d > 0 {
                        best = best.min(prev[d - 1] + p1);
                    }
                    if d + 1 < nd {
                        best = best.min(prev[d + 1] + p1);
                    }
                    path[at + d] = cost(x, y, d) + best - prev_min;
                }
            }
        }
        sum.iter_mut().zip(&path).for_each(|(s, l)| *s += l);
    }
    let winner = |s: &[u32]| (0..s.len()).min_by_key(|&d| (s[d], d)).unwrap();
    let mut out = vec![f32::NAN; w * h];
    for y in 0..h {
        let row = &sum[y * w * nd..][..w * nd];
        let s_at = |x: usize| &row[x * nd..][..nd];
        // Right image winner at right pixel xr: over the left pixels xr + d.
        let right_best = |xr: usize| (0..nd.min(w - xr)).min_by_key(|&d| (row[(xr + d) * nd + d], d)).unwrap();
        for x in 0..w {
            let s = s_at(x);
            let best = winner(s);
            let min = s[best];
            let unique = (0..nd).filter(|d| d.abs_diff(best) > 1).all(|d| s[d] * (100 - u32::from(p.uniqueness)) >= min * 100);
            if best > x || !unique {
                continue;
            }
            let mut disp = best as f32;
            if best > 0 && best + 1 < nd {
                let (c0, c1, c2) = (s[best - 1] as f32, s[best] as f32, s[best + 1] as f32);
                let denom = c0 - 2.0 * c1 + c2;
                if denom > 0.0 {
                    disp = best as f32 + (c0 - c2) / (2.0 * denom);
                }
            }
            if let Some(max_diff) = p.lr_max_diff {
                let d = (disp + 0.5).floor() as usize;
                if d > x || right_best(x - d).abs_diff(d) > usize::from(max_diff) {
                    continue;
                }
            }
            out[y * w + x] = disp;
        }
    }
    out
}

#[test]
fn the_matcher_equals_the_textbook_definition_for_any_thread_count() {
    // Odd sizes, so that no loop stride divides them.
    let (w, h) = (83, 37);
    let (l, r, _) = occlusion_scene(w, h);
    let labels: Vec<u16> = (0..w * h).map(|i| (i % w / 20 + i / w / 15) as u16).collect();
    let cases = [
        (params(24), None),
        (StereoParams { paths: Paths::Four, ..params(24) }, None),
        (StereoParams { p2_gradient: Some(16), label_border_p1: 3, label_border_p2: 30, ..params(32) }, Some(&labels[..])),
        (StereoParams { paths: Paths::Four, uniqueness: 0, lr_max_diff: None, ..params(16) }, Some(&labels[..])),
        (StereoParams { paths: Paths::Five, ..params(24) }, None),
        (StereoParams { paths: Paths::Three, p2_gradient: Some(16), ..params(16) }, Some(&labels[..])),
    ];
    for (p, labels) in cases {
        let want = reference_sgm(&l, &r, w, h, &p, labels);
        assert!(want.iter().filter(|d| !d.is_nan()).count() > w * h / 2, "{p:?}: the reference finds too little");
        // 37 rows: the single pass's ring of 4, 8, 12 and 16 rows wraps round unevenly.
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| StereoMatcher::new(p.clone()).unwrap().compute(view(w, h, &l), view(w, h, &r), labels).unwrap().0);
            let differ = got.data.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan())).count();
            assert_eq!(differ, 0, "{p:?}, {threads} threads: {differ} pixels differ from the reference");
        }
    }
}

#[test]
fn a_single_pass_keeps_a_few_rows_instead_of_the_volume() {
    let (w, h) = (120, 90);
    let (l, r, _) = occlusion_scene(w, h);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (paths, rows) in [(Paths::Eight, h), (Paths::Four, h), (Paths::Five, 8), (Paths::Three, 8)] {
        let mut m = StereoMatcher::new(StereoParams { paths, ..params(32) }).unwrap();
        pool.install(|| m.compute(view(w, h, &l), view(w, h, &r), None)).unwrap();
        assert_eq!((m.cost.len(), m.sum.len()), (rows * w * 32, rows * w * 32), "{paths:?}");
    }
}

#[test]
fn a_panic_inside_the_single_pass_reaches_the_caller() {
    // Census codes one short: preparing the last row indexes past them and panics in
    // whichever thread took it. The other threads must stop rather than wait for that row
    // for ever, and the panic must come out of the call.
    let (w, h, nd) = (64, 40, 16);
    let (l, _, _) = occlusion_scene(w, h);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let p = StereoParams { paths: Paths::Five, ..params(nd) };
        let codes = vec![0u64; w * h - 1];
        let census = schedule::Census { left: &codes, right: &codes, bits: 62 };
        let pen = aggregate::Penalties::new(&p, &l, None);
        let sel = select::Select { disps: nd, uniqueness: p.uniqueness, lr_max_diff: p.lr_max_diff };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let rows = schedule::buffer_rows(Paths::Five, h);
        let (mut cost, mut sum, mut out) = (vec![0u8; rows * w * nd], vec![0u16; rows * w * nd], vec![0f32; w * h]);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| schedule::match_rows(Isa::detect(), census, w, nd, pen, Paths::Five, sel, &mut cost, &mut sum, &mut out))
        }));
        let _ = tx.send(ran.is_err());
    });
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(60)), Ok(true), "the pass should end with the panic");
}
