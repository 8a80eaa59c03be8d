using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text.Json.Nodes;
using Google.Protobuf;
using OrtFinetune.Host.Logging.TensorBoard;

namespace OrtFinetune.Host.Logging;

/// <summary>
/// TensorBoard event files: <c>DIR/events.out.tfevents.&lt;unix seconds&gt;.&lt;host&gt;.&lt;pid&gt;.&lt;n&gt;</c> (the
/// name PyTorch's SummaryWriter gives; TensorBoard reads every file with "tfevents" in its name, so a
/// resumed run adds a file beside the first and the charts continue). The file is a TFRecord stream of
/// <see cref="Event"/> protobufs: first <c>file_version = "brain.Event:2"</c>, then one event per scalar
/// (as SummaryWriter.add_scalar writes them) with wall_time, step and a summary value
/// <c>{tag, simple_value}</c>; the tag is the metric's name (loss, lr, val_accuracy, ...).
/// </summary>
public sealed class TensorBoardLogger : IMetricsLogger
{
    public const string FileVersion = "brain.Event:2";
    static int _files;
    readonly FileStream _file;
    readonly Func<double> _wallTime;
    public string FilePath { get; }

    /// <param name="dir">The folder (created if missing).</param>
    /// <param name="wallTime">Seconds since the Unix epoch (default: the clock).</param>
    public TensorBoardLogger(string dir, Func<double>? wallTime = null)
    {
        _wallTime = wallTime ?? (() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0);
        Directory.CreateDirectory(dir);
        var start = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        while (true)
        {
            var name = $"events.out.tfevents.{start}.{Environment.MachineName}.{Environment.ProcessId}.{Interlocked.Increment(ref _files) - 1}";
            FilePath = Path.Combine(dir, name);
            try { _file = new FileStream(FilePath, FileMode.CreateNew, FileAccess.Write, FileShare.Read); break; }
            catch (IOException) when (File.Exists(FilePath)) { }
        }
        Write(new Event { WallTime = _wallTime(), FileVersion = FileVersion });
        _file.Flush();
    }

    public void Log(JsonObject record)
    {
        long step = MetricRecord.Step(record);
        double now = _wallTime();
        foreach (var (tag, value) in MetricRecord.Scalars(record))
            Write(new Event { WallTime = now, Step = step, Summary = new Summary { Value = { new Summary.Types.Value { Tag = tag, SimpleValue = (float)value } } } });
        _file.Flush();
    }

    void Write(Event e) => _file.Write(TfRecord.Frame(e.ToByteArray()));

    public void Dispose()
    {
        try { _file.Dispose(); } catch (IOException) { }
    }
}

/// <summary>
/// TFRecord framing: <c>uint64 length</c>, <c>uint32 masked_crc32c(length bytes)</c>, <c>data</c>,
/// <c>uint32 masked_crc32c(data)</c>, all little-endian. The CRC is CRC-32C (Castagnoli), from
/// System.IO.Hashing's <see cref="Crc32ParameterSet.Crc32C"/> (hardware-accelerated on x86 and ARM).
/// </summary>
public static class TfRecord
{
    const uint MaskDelta = 0xa282ead8;

    public static uint Crc32C(ReadOnlySpan<byte> data) => Crc32.HashToUInt32(Crc32ParameterSet.Crc32C, data);

    /// <summary>TensorFlow's masking: rotate right by 15 bits and add a constant (a CRC of data holding CRCs stays informative).</summary>
    public static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + MaskDelta;
    }

    /// <summary>One record: header, data and footer.</summary>
    public static byte[] Frame(ReadOnlySpan<byte> data)
    {
        var record = new byte[8 + 4 + data.Length + 4];
        BinaryPrimitives.WriteUInt64LittleEndian(record, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(8), MaskedCrc32C(record.AsSpan(0, 8)));
        data.CopyTo(record.AsSpan(12));
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(12 + data.Length), MaskedCrc32C(data));
        return record;
    }
}
