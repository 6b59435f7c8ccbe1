//! The agent protocol's gRPC codec (`proto/pullwatch/v1`): prost's, with small buffers.
//!
//! tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer. The agent
//! protocol's messages are small (a heartbeat is a few bytes, a task or a result a few
//! hundred; an image list grows the buffer as it needs), and the aggregator holds one
//! long-lived stream per node: 16 KiB a node, 80 MiB for 5,000 nodes, most of it never
//! used. 1 KiB buffers hold any heartbeat, task or result.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size (and growth step) of a stream's encode and decode buffers.
pub(crate) const BUFFER_SIZE: usize = 1024;
/// Encoded messages are handed to the stream at this size at the latest (tonic's
/// default).
pub(crate) const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers (the generated agent protocol's codec).
#[derive(Debug, Clone)]
pub(crate) struct AgentProtocolCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for AgentProtocolCodec<T, U> {
    fn default() -> Self {
        AgentProtocolCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for AgentProtocolCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
