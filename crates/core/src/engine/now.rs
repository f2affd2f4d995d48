//! `now()` evaluated when each micro-batch runs, not folded into a constant when the plan is
//! built: plans live for the whole run, and `processed_at` must be the time of processing.

use std::any::Any;

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// Replaces DataFusion's `now()` with a volatile one returning UTC time in nanoseconds.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ProcessingTimeNow {
    signature: Signature,
}

impl Default for ProcessingTimeNow {
    fn default() -> Self {
        Self {
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for ProcessingTimeNow {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "now"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            TimeUnit::Nanosecond,
            Some("UTC".into()),
        ))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let nanos = chrono::Utc::now().timestamp_nanos_opt();
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
            nanos,
            Some("UTC".into()),
        )))
    }
}
