//! CUDA graphs (a sequence of launches captured once and replayed) and timing events on a
//! GPU's stream.

use cudarc::driver::sys::{self, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::{Gpu, GpuError, GpuResult};

impl Gpu {
    /// Records the launches `f` makes into a graph instead of running them. The launches must
    /// not allocate, copy from the host or synchronize. An error of `f` ends the capture and is
    /// returned as it is.
    pub fn capture<E: From<GpuError>>(
        &self,
        f: impl FnOnce() -> Result<(), E>,
    ) -> Result<Graph, E> {
        self.bind()?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(GpuError::driver("beginning a graph capture"))?;
        let body = f();
        let ended = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(GpuError::driver("instantiating a captured graph"));
        body?;
        match ended? {
            Some(graph) => Ok(Graph { graph }),
            None => Err(GpuError::Driver {
                context: "capturing a graph (nothing was captured)",
                error: cudarc::driver::DriverError(
                    sys::cudaError_enum::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                ),
            }
            .into()),
        }
    }

    /// Runs a captured graph on the stream.
    pub fn replay(&self, graph: &Graph) -> GpuResult<()> {
        graph
            .graph
            .launch()
            .map_err(GpuError::driver("replaying a graph"))
    }

    /// Two timing events on this GPU, to time work queued on its stream ([`GpuTimer`]).
    pub fn timer(&self) -> GpuResult<GpuTimer> {
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(GpuError::driver("creating a timing event"))
        };
        Ok(GpuTimer {
            start: event()?,
            end: event()?,
        })
    }

    /// Records `timer`'s start on the stream: after the work queued so far.
    pub fn mark_start(&self, timer: &GpuTimer) -> GpuResult<()> {
        self.record(&timer.start)
    }

    /// Records `timer`'s end on the stream.
    pub fn mark_end(&self, timer: &GpuTimer) -> GpuResult<()> {
        self.record(&timer.end)
    }

    fn record(&self, event: &cudarc::driver::CudaEvent) -> GpuResult<()> {
        event
            .record(&self.stream)
            .map_err(GpuError::driver("recording a timing event"))
    }
}

/// A start and an end event on a GPU's stream: the GPU's time between the work queued before
/// each ([`Gpu::mark_start`], [`Gpu::mark_end`]), for diagnostics (recording costs the host a few microseconds).
#[derive(Debug)]
pub struct GpuTimer {
    start: cudarc::driver::CudaEvent,
    end: cudarc::driver::CudaEvent,
}

impl GpuTimer {
    /// Microseconds from the start mark to the end mark (waits for the end).
    pub fn elapsed_us(&self) -> GpuResult<f64> {
        self.start
            .elapsed_ms(&self.end)
            .map(|ms| f64::from(ms) * 1e3)
            .map_err(GpuError::driver("reading a timing event"))
    }
}

/// A captured sequence of launches.
pub struct Graph {
    graph: CudaGraph,
}

// SAFETY: a graph is only launched from the thread that owns the engine's models (the executor);
// it moves between threads only while unused.
unsafe impl Send for Graph {}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}
