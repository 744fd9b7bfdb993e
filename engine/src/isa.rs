//! Which instruction set the hot loops are compiled for, chosen once per call at run time.
//!
//! The kernels are written once as portable Rust; on x86_64 a copy compiled with AVX2 and
//! POPCNT is used when the CPU has them (the default x86_64 target only assumes SSE2). Stereo
//! arithmetic is integer up to the final subpixel step, and the cost map's float loops use
//! separate multiplies and adds in a fixed lane order (Rust never fuses them), so both copies
//! give identical results (checked by tests).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    /// Only ever constructed by [`Isa::detect`] after checking the CPU.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt") {
            return Isa::Avx2;
        }
        Isa::Portable
    }
}

/// Defines `$name(isa, args)` that runs `$imp(args)`, through an AVX2+POPCNT-compiled copy
/// when `isa` says the CPU has them. `$imp` must be `#[inline(always)]` so that the copy
/// really is compiled for those features.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident => $imp:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)?) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,popcnt")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                $imp($($arg),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Isa::Avx2 exists only after Isa::detect saw AVX2 and POPCNT on this CPU.
                $crate::isa::Isa::Avx2 => unsafe { avx2($($arg),*) },
                $crate::isa::Isa::Portable => $imp($($arg),*),
            }
        }
    };
}
pub(crate) use dispatch;
