//! Sizes in bytes as `pipelines.yaml` writes them: `512MiB`, `2GiB`, `100MB`, or a number of bytes.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A number of bytes, read from `512MiB`-style text or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    /// `n` gibibytes.
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    /// The size as a `usize`, saturating on 32-bit targets.
    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// Parses `512MiB`, `2 GiB`, `100MB`, `64kB` or `1048576` (bytes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size (write it like 512MiB or 2GiB)"))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            "TB" => 1_000_000_000_000,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (B, kB, KiB, MB, MiB, GB, GiB, TB, TiB)"
                ))
            }
        };
        number
            .checked_mul(factor)
            .map(Self)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(n) => Ok(Self(n)),
            Raw::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes_read_with_binary_and_decimal_units_and_print_back() {
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize::mib(512)));
        assert_eq!(ByteSize::parse("2 GiB"), Ok(ByteSize::gib(2)));
        assert_eq!(ByteSize::parse("100MB"), Ok(ByteSize(100_000_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("lots").unwrap_err().contains("not a size"));
        assert!(ByteSize::parse("3 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(ByteSize::parse("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(ByteSize::gib(2).to_string(), "2GiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }
}
