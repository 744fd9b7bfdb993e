//! Parameters of semi-global matching, their defaults and their validation.
//!
//! Costs are census Hamming distances (0 ..= window bits, at most 63), so P1/P2 live on that
//! scale: the defaults (P1 10, P2 120 for a 9x7 census) are those of Fixstars' libSGM, which uses
//! the same cost.

/// Errors of the stereo matcher. Every variant names the field and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum StereoError {
    #[error("stereo parameter `{field}` = {value}: {reason}")]
    Param { field: &'static str, value: String, reason: String },

    #[error("stereo input `{field}` = {value}: {reason}")]
    Input { field: &'static str, value: String, reason: String },
}

impl StereoError {
    pub(crate) fn param(field: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        StereoError::Param { field, value: value.to_string(), reason: reason.into() }
    }
    pub(crate) fn input(field: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        StereoError::Input { field, value: value.to_string(), reason: reason.into() }
    }
}

/// Largest P1/P2 (also across label borders). With 8 paths each path cost is at most
/// `63 + P2`, so the sum over paths stays below 8 * (63 + 8000) = 64504 and fits a u16.
pub const MAX_PENALTY: u16 = 8000;
/// Largest number of disparity levels.
pub const MAX_DISPARITIES: usize = 1024;

/// Scanline directions aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paths {
    /// Left-right, right-left, top-down: one pass down the image, as with `Five`.
    Three,
    /// Left-right, right-left, top-down, bottom-up.
    Four,
    /// Left-right, right-left, top-down and the two diagonals from above: every path comes
    /// from the left, the right or above, so one pass down the image aggregates and selects
    /// each row while it is in cache, and the cost volume is never held whole (a few rows
    /// instead of 3 bytes per pixel and level). StereoSGBM's default mode uses these five.
    Five,
    /// All eight directions: Five plus bottom-up and the two diagonals from below
    /// (Hirschmüller's recommendation).
    Eight,
}

impl Paths {
    pub fn count(self) -> usize {
        match self {
            Paths::Three => 3,
            Paths::Four => 4,
            Paths::Five => 5,
            Paths::Eight => 8,
        }
    }

    /// The directions for a count of 3, 4, 5 or 8.
    pub fn from_count(count: usize) -> Option<Paths> {
        [Paths::Three, Paths::Four, Paths::Five, Paths::Eight].into_iter().find(|p| p.count() == count)
    }

    /// Whether every path comes from above or along the row (one pass down the image).
    pub fn single_pass(self) -> bool {
        matches!(self, Paths::Three | Paths::Five)
    }
}

/// Semi-global matching parameters. `StereoParams::default()` is a good start for rectified
/// 8-bit images; only `max_disp` usually needs setting.
#[derive(Clone, Debug, PartialEq)]
pub struct StereoParams {
    /// Number of disparity levels D: disparities 0 ..= D-1 are searched (OpenCV's
    /// `numDisparities` with `minDisparity = 0`). Multiple of 8 in 8 ..= 1024, so that the CPU
    /// SIMD lanes and the later GPU kernels see the same volume. Default 64.
    pub max_disp: usize,
    /// Census window width and height, odd, with width*height - 1 <= 64 bits. Default 9x7.
    pub census_width: usize,
    pub census_height: usize,
    /// Penalty for a disparity change of 1 between neighbours on a path. Default 10.
    pub p1: u16,
    /// Penalty for a larger change (>= P1, <= 8000). Default 120.
    pub p2: u16,
    /// If set to g, P2 shrinks at intensity edges: P2' = max(P1, P2 * g / (g + |I(p) - I(q)|))
    /// for neighbours p, q of the left image. Default None (constant P2).
    pub p2_gradient: Option<u16>,
    /// Path directions. Default `Paths::Eight`.
    pub paths: Paths,
    /// Uniqueness margin in percent (OpenCV's `uniquenessRatio`): the best cost times
    /// 100/(100-u) must stay below every cost more than one level away, else the pixel is
    /// invalid. 0 = off, at most 99. Default 10.
    pub uniqueness: u8,
    /// Left-right check: largest |d_left - d_right| in whole pixels (OpenCV's `disp12MaxDiff`);
    /// None = no check. Default Some(1).
    pub lr_max_diff: Option<u16>,
    /// Penalties used instead of (P1, P2) between neighbours with different labels, when a
    /// label map is given. Lower than P1/P2 lets disparity jump at object borders. Defaults 10
    /// and 30. Ignored without a label map.
    pub label_border_p1: u16,
    pub label_border_p2: u16,
}

impl Default for StereoParams {
    fn default() -> Self {
        StereoParams {
            max_disp: 64,
            census_width: 9,
            census_height: 7,
            p1: 10,
            p2: 120,
            p2_gradient: None,
            paths: Paths::Eight,
            uniqueness: 10,
            lr_max_diff: Some(1),
            label_border_p1: 10,
            label_border_p2: 30,
        }
    }
}

impl StereoParams {
    /// Checks every field; the error names the first one at fault and its value.
    pub fn validate(&self) -> Result<(), StereoError> {
        if self.max_disp == 0 || !self.max_disp.is_multiple_of(8) || self.max_disp > MAX_DISPARITIES {
            return Err(StereoError::param("max_disp", self.max_disp, format!("must be a multiple of 8 in 8..={MAX_DISPARITIES}")));
        }
        for (field, v) in [("census_width", self.census_width), ("census_height", self.census_height)] {
            if v.is_multiple_of(2) || v > 63 {
                return Err(StereoError::param(field, v, "must be odd and at most 63"));
            }
        }
        let bits = self.census_width * self.census_height - 1;
        if bits == 0 || bits > 64 {
            return Err(StereoError::param(
                "census_width",
                format!("{}x{}", self.census_width, self.census_height),
                format!("window has {bits} comparison bits; must be 1..=64 (e.g. 9x7, 7x7)"),
            ));
        }
        for (field, v) in
            [("p1", self.p1), ("p2", self.p2), ("label_border_p1", self.label_border_p1), ("label_border_p2", self.label_border_p2)]
        {
            if v > MAX_PENALTY {
                return Err(StereoError::param(field, v, format!("must be at most {MAX_PENALTY} (path sums are u16)")));
            }
        }
        if self.p2 < self.p1 {
            return Err(StereoError::param("p2", self.p2, format!("must be >= p1 ({})", self.p1)));
        }
        if self.label_border_p2 < self.label_border_p1 {
            return Err(StereoError::param(
                "label_border_p2",
                self.label_border_p2,
                format!("must be >= label_border_p1 ({})", self.label_border_p1),
            ));
        }
        if self.p2_gradient == Some(0) {
            return Err(StereoError::param("p2_gradient", 0, "must be positive (None switches it off)"));
        }
        if self.uniqueness > 99 {
            return Err(StereoError::param("uniqueness", self.uniqueness, "must be a percentage in 0..=99"));
        }
        Ok(())
    }

    /// Bits of the census code, which is also the largest matching cost.
    pub fn census_bits(&self) -> u32 {
        (self.census_width * self.census_height - 1) as u32
    }
}
