//! Which instruction set the hot loops are compiled for, chosen once per call at run time.
//!
//! The kernels are written once as portable Rust; on x86_64 copies compiled with AVX2 and
//! POPCNT, and with AVX-512 (BW, VL and VPOPCNTDQ: 32 u16 lanes and vector popcounts), are used
//! when the CPU has them (the default x86_64 target only assumes SSE2). Stereo
//! arithmetic is integer up to the final subpixel step, and the cost map's float loops use
//! separate multiplies and adds in a fixed lane order (Rust never fuses them), so both copies
//! give identical results (checked by tests).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    /// Only ever constructed by [`Isa::available`] after checking the CPU.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VPOPCNTDQ; as for `Avx2`, only after checking the CPU.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest instruction set this CPU has, or at most the one named by `OVSEG_SIMD`
    /// (`portable`, `avx2`, `avx512`: for comparing them, or to step around a suspect path).
    pub(crate) fn detect() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let mut isas = Isa::available();
            if let Ok(cap) = std::env::var("OVSEG_SIMD") {
                match isas.iter().position(|isa| isa.name() == cap.trim()) {
                    Some(at) => isas.truncate(at + 1),
                    None => tracing::warn!("OVSEG_SIMD={cap:?} is not one of {:?} on this CPU; using the widest", isas.iter().map(|i| i.name()).collect::<Vec<_>>()),
                }
            }
            isas.pop().unwrap_or(Isa::Portable)
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
        }
    }

    /// Every instruction set this CPU can run, narrowest first (tests compare them all).
    pub(crate) fn available() -> Vec<Isa> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("popcnt") {
                isas.push(Isa::Avx2);
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vpopcntdq") {
                    isas.push(Isa::Avx512);
                }
            }
        }
        isas
    }
}

/// Defines `$name(isa, args)` that runs `$imp(args)`, through an AVX2+POPCNT-compiled copy
/// when `isa` says the CPU has them. `$imp` must be `#[inline(always)]` so that the copies
/// really are compiled for those features. Kernels marked `wide` get an AVX-512 copy too;
/// the others run an AVX2 build on AVX-512 CPUs. Measured on the 640x480 pair (CPU time,
/// AVX-512 against AVX2): stereo costs 2.2x less (vector popcounts), census and selection the
/// same, and aggregation's short per-pixel loops (48 to 128 levels) slower, the small
/// Motorcycle pair taking 1.6x as long.
macro_rules! dispatch {
    (wide $(#[$meta:meta])* $vis:vis fn $name:ident => $imp:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)?) => {
        $crate::isa::dispatch!(@define "avx2,popcnt,avx512f,avx512bw,avx512vl,avx512vpopcntdq" $(#[$meta])* $vis fn $name => $imp($($arg: $ty),*) $(-> $ret)?);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident => $imp:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)?) => {
        $crate::isa::dispatch!(@define $(#[$meta])* $vis fn $name => $imp($($arg: $ty),*) $(-> $ret)?);
    };
    (@define $($wide:literal)? $(#[$meta:meta])* $vis:vis fn $name:ident => $imp:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,popcnt")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                $imp($($arg),*)
            }
            $crate::isa::dispatch!(@widest [$($wide)?] $imp($($arg: $ty),*) $(-> $ret)?);
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Isa::Avx2 exists only after Isa::available saw AVX2 and POPCNT on this CPU.
                $crate::isa::Isa::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Isa::Avx512 exists only after Isa::available saw these features on this CPU.
                $crate::isa::Isa::Avx512 => unsafe { $crate::isa::dispatch!(@pick [$($wide)?] widest avx2)($($arg),*) },
                $crate::isa::Isa::Portable => $imp($($arg),*),
            }
        }
    };
    (@widest [] $($rest:tt)*) => {};
    (@widest [$wide:literal] $imp:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $wide)]
        fn widest($($arg: $ty),*) $(-> $ret)? {
            $imp($($arg),*)
        }
    };
    (@pick [] $widest:ident $avx2:ident) => { $avx2 };
    (@pick [$wide:literal] $widest:ident $avx2:ident) => { $widest };
}
pub(crate) use dispatch;
