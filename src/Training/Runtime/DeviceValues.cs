using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using ElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;

namespace OrtFinetune.Training.Runtime;

/// <summary>
/// Allocates tensors in the device's memory and moves bytes between host and device. On the CPU a
/// device tensor is host memory and copies are spans; on CUDA the copies run through a one-node
/// Identity session whose output is bound to the destination (no host round trip per step).
/// </summary>
public sealed class DeviceValues : IDisposable
{
    readonly DeviceSpec _device;
    readonly OrtMemoryInfo _memInfo;
    readonly OrtAllocator _allocator;
    readonly Dictionary<DataType, InferenceSession> _identity = new();
    readonly SessionOptions? _so;
    readonly Dictionary<(DataType, string), OrtValue> _staging = new();

    public DeviceSpec Device => _device;
    public OrtMemoryInfo MemoryInfo => _memInfo;

    public DeviceValues(DeviceSpec device, InferenceSession anySessionOnDevice)
    {
        _device = device;
        _memInfo = device.MemoryInfo();
        _allocator = device.IsCuda ? new OrtAllocator(anySessionOnDevice, _memInfo) : OrtAllocator.DefaultInstance;
        if (device.IsCuda) _so = device.CreateSessionOptions();
    }

    public static ElementType ToOrt(DataType t) => t switch
    {
        DataType.Float => ElementType.Float, DataType.Double => ElementType.Double, DataType.Float16 => ElementType.Float16,
        DataType.BFloat16 => ElementType.BFloat16, DataType.Int64 => ElementType.Int64, DataType.Int32 => ElementType.Int32,
        DataType.Bool => ElementType.Bool, DataType.UInt8 => ElementType.UInt8, DataType.Int8 => ElementType.Int8,
        _ => throw new NotSupportedException($"element type {t}"),
    };

    public static DataType FromOrt(ElementType t) => t switch
    {
        ElementType.Float => DataType.Float, ElementType.Double => DataType.Double, ElementType.Float16 => DataType.Float16,
        ElementType.BFloat16 => DataType.BFloat16, ElementType.Int64 => DataType.Int64, ElementType.Int32 => DataType.Int32,
        ElementType.Bool => DataType.Bool, ElementType.UInt8 => DataType.UInt8, ElementType.Int8 => DataType.Int8,
        _ => throw new NotSupportedException($"element type {t}"),
    };

    /// <summary>An uninitialized tensor in device memory.</summary>
    public OrtValue Allocate(DataType t, long[] shape) => OrtValue.CreateAllocatedTensorValue(_allocator, ToOrt(t), shape);

    /// <summary>
    /// One zeroed block of device memory for <paramref name="elements"/> values of <paramref name="t"/>, and a
    /// flat 1-D tensor over it. Tensors made by <see cref="View"/> share the block; dispose them before it.
    /// </summary>
    public (OrtMemoryAllocation Memory, OrtValue Flat) AllocateFlat(DataType t, long elements)
    {
        long bytes = elements * t.SizeOf();
        if (bytes <= 0 || bytes > uint.MaxValue) throw new TrainingException($"a flat buffer of {bytes} bytes cannot be allocated (1 byte to 4 GiB)");
        var mem = _allocator.Allocate((uint)bytes);
        var flat = View(mem, 0, t, [elements]);
        Clear(t, [elements], flat);
        return (mem, flat);
    }

    /// <summary>A tensor over elements [offset, offset + product(shape)) of a block from <see cref="AllocateFlat"/> (no copy).</summary>
    public OrtValue View(OrtMemoryAllocation memory, long offsetElements, DataType t, long[] shape)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        long start = offsetElements * t.SizeOf(), bytes = count * t.SizeOf();
        if (offsetElements < 0 || start + bytes > memory.Size)
            throw new TrainingException($"a view of {bytes} bytes at {start} does not fit a block of {memory.Size} bytes");
        return OrtValue.CreateTensorValueWithData(_memInfo, ToOrt(t), shape, memory.DangerousGetHandle() + (nint)start, bytes);
    }

    /// <summary>Writes these little-endian bytes into an existing device tensor of that type and shape.</summary>
    public void UploadInto(DataType t, long[] shape, ReadOnlySpan<byte> bytes, OrtValue dst)
    {
        if (!_device.IsCuda) { bytes.CopyTo(dst.GetTensorMutableRawData()); return; }
        using var host = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, ToOrt(t), shape);
        bytes.CopyTo(host.GetTensorMutableRawData());
        Copy(t, host, dst);
    }

    /// <summary>A device tensor holding these little-endian bytes.</summary>
    public OrtValue Upload(DataType t, long[] shape, ReadOnlySpan<byte> bytes)
    {
        var v = Allocate(t, shape);
        UploadInto(t, shape, bytes, v);
        return v;
    }

    public OrtValue Zeros(DataType t, long[] shape)
    {
        var v = Allocate(t, shape);
        Clear(t, shape, v);
        return v;
    }

    /// <summary>Sets every byte of a device tensor of that type and shape to zero.</summary>
    void Clear(DataType t, long[] shape, OrtValue v)
    {
        if (!_device.IsCuda) v.GetTensorMutableRawData().Clear();
        else UploadInto(t, shape, new byte[shape.Aggregate(1L, (a, b) => a * b) * t.SizeOf()], v);
    }

    /// <summary>The bytes of a device tensor, copied to the host.</summary>
    public byte[] Download(OrtValue v)
    {
        if (!_device.IsCuda) return v.GetTensorDataAsSpan<byte>().ToArray();
        var info = v.GetTensorTypeAndShape();
        using var host = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, info.ElementDataType, info.Shape);
        Copy(FromOrt(info.ElementDataType), v, host);
        return host.GetTensorDataAsSpan<byte>().ToArray();
    }

    /// <summary>
    /// The bytes of a device tensor as host memory, for writing it out (checkpoints, exports): on the CPU the tensor's own
    /// bytes, not copied (valid while the tensor lives and is not written: a ViT-B/16 checkpoint of weights and AdamW state
    /// would otherwise copy 1 GB to the managed heap); on CUDA a host copy.
    /// </summary>
    public ReadOnlyMemory<byte> HostBytes(OrtValue v) => _device.IsCuda ? Download(v) : new NativeBytes(v).Memory;

    /// <summary>A CPU tensor's bytes as Memory, without a copy.</summary>
    sealed unsafe class NativeBytes(OrtValue v) : System.Buffers.MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => v.GetTensorMutableRawData();
        public override System.Buffers.MemoryHandle Pin(int elementIndex = 0)
        {
            fixed (byte* p = GetSpan()) return new System.Buffers.MemoryHandle(p + elementIndex);   // native memory: never moves
        }
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
    }

    /// <summary>
    /// Runs <paramref name="work"/> on a host pointer to a device tensor's bytes: the tensor itself on the CPU; on
    /// CUDA a host copy (one staging buffer per type and shape, kept), written back afterwards. This is how a host
    /// library (MPI) reduces device buffers when no device-side collective is available.
    /// </summary>
    public unsafe void OnHost(OrtValue v, Action<IntPtr> work)
    {
        if (!_device.IsCuda)
        {
            fixed (byte* p = v.GetTensorMutableRawData()) work((IntPtr)p);
            return;
        }
        var info = v.GetTensorTypeAndShape();
        var t = FromOrt(info.ElementDataType);
        var key = (t, string.Join(",", info.Shape));
        if (!_staging.TryGetValue(key, out var host))
            _staging[key] = host = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, info.ElementDataType, info.Shape);
        Copy(t, v, host);
        fixed (byte* p = host.GetTensorMutableRawData()) work((IntPtr)p);
        Copy(t, host, v);
    }

    /// <summary>Copies src into dst (same shape and type) through an Identity session on the device.</summary>
    public void Copy(DataType t, OrtValue src, OrtValue dst)
    {
        if (!_device.IsCuda) { src.GetTensorDataAsSpan<byte>().CopyTo(dst.GetTensorMutableRawData()); return; }
        if (!_identity.TryGetValue(t, out var s))
        {
            var m = new Model();
            m.Graph.Inputs.Add(new ValueInfo("x", new TensorType(t, null)));
            m.Graph.Outputs.Add(new ValueInfo("y", new TensorType(t, null)));
            m.Graph.Nodes.Add(new Node("Identity", ["x"], ["y"], "copy"));
            _identity[t] = s = new InferenceSession(ModelIO.ToBytes(m), _so!);
        }
        using var binding = s.CreateIoBinding();
        binding.BindInput("x", src);
        binding.BindOutput("y", dst);
        using var ro = new RunOptions();
        s.RunWithBinding(ro, binding);
        binding.SynchronizeBoundOutputs();
    }

    public void Dispose()
    {
        foreach (var s in _identity.Values) s.Dispose();
        foreach (var v in _staging.Values) v.Dispose();
        _so?.Dispose();
        if (_device.IsCuda) _allocator.Dispose();
    }
}
