using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Runtime;

/// <summary>
/// The checkpoint file format (docs/checkpoint.md): "ORTFTCK1", an int64 header length, a UTF-8 JSON
/// header (format version, metadata, tensor table), zero padding to 64 bytes, the tensors' raw
/// little-endian bytes (each 64-byte aligned), the XxHash64 of every byte before it (8 bytes,
/// little-endian) and the trailer "ORTFTEND". Written to a temporary file, flushed to disk and renamed
/// over the target, so a crash leaves the previous checkpoint intact. Loading verifies the checksum before
/// it reads any tensor, so a flipped bit anywhere is an error naming the file.
/// </summary>
public sealed class CheckpointFile
{
    /// <summary>Version 2 added the checksum; version 1 files (no checksum) are refused with a message that says so.</summary>
    public const int FormatVersion = 2;
    static readonly byte[] Magic = "ORTFTCK1"u8.ToArray();
    static readonly byte[] Trailer = "ORTFTEND"u8.ToArray();
    const int Align = 64;
    const long MaxHeader = 64L << 20;
    /// <summary>Checksum and end marker: the last 16 bytes of the file.</summary>
    const int FooterLength = 16;

    /// <summary>Tensors in file order.</summary>
    public List<Tensor> Tensors { get; } = new();
    /// <summary>Free-form metadata (step, learning rate, scaler state, RNG state, data position, ...).</summary>
    public Dictionary<string, string> Meta { get; } = new();

    public Tensor Get(string name, string path) =>
        Tensors.FirstOrDefault(t => t.Name == name) ?? throw new CheckpointException($"{path}: checkpoint has no tensor '{name}'");

    public void Save(string path)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var table = new JsonArray();
        long offset = 0;
        foreach (var t in Tensors)
        {
            offset = (offset + Align - 1) / Align * Align;
            table.Add(new JsonObject
            {
                ["name"] = t.Name, ["dtype"] = (int)t.Type, ["shape"] = new JsonArray(t.Dims.Select(d => (JsonNode)d).ToArray()),
                ["offset"] = offset, ["length"] = t.RawData.Length,
            });
            offset += t.RawData.Length;
        }
        var meta = new JsonObject();
        foreach (var (k, v) in Meta) meta[k] = v;
        var header = new JsonObject { ["format"] = FormatVersion, ["meta"] = meta, ["tensors"] = table };
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        var tmp = $"{full}.tmp-{Environment.ProcessId}";
        RemoveStaleTemporaries(full);
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                var hash = new XxHash64();
                void Write(ReadOnlySpan<byte> bytes) { fs.Write(bytes); hash.Append(bytes); }
                void PadTo(long from) => Write(new byte[(int)((Align - (fs.Position - from) % Align) % Align)]);
                Write(Magic);
                Span<byte> word = stackalloc byte[8];
                BinaryPrimitives.WriteInt64LittleEndian(word, headerBytes.Length);
                Write(word);
                Write(headerBytes);
                PadTo(0);
                long dataStart = fs.Position;
                foreach (var t in Tensors)
                {
                    PadTo(dataStart);
                    Write(t.RawData.Span);
                }
                BinaryPrimitives.WriteUInt64LittleEndian(word, hash.GetCurrentHashAsUInt64());
                fs.Write(word);
                fs.Write(Trailer);
                fs.Flush(true);
            }
            File.Move(tmp, full, true);
        }
        // ArgumentOutOfRangeException: .NET's report of EFBIG (file larger than the file system or RLIMIT_FSIZE allows).
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentOutOfRangeException)
        {
            TryDelete(tmp);
            throw new CheckpointException($"{full}: could not write the checkpoint ({e.Message}); the previous checkpoint, if any, is unchanged", e);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    /// <summary>Deletes temporary files left by writers that were killed mid-write (their process is gone).</summary>
    static void RemoveStaleTemporaries(string full)
    {
        var dir = Path.GetDirectoryName(full)!;
        foreach (var f in Directory.EnumerateFiles(dir, Path.GetFileName(full) + ".tmp-*"))
        {
            if (!int.TryParse(f[(f.LastIndexOf("-", StringComparison.Ordinal) + 1)..], out var pid) || pid == Environment.ProcessId) continue;
            bool alive;
            try { using var p = System.Diagnostics.Process.GetProcessById(pid); alive = !p.HasExited; }
            catch (ArgumentException) { alive = false; }
            if (!alive) TryDelete(f);
        }
    }

    static void TryDelete(string p) { try { File.Delete(p); } catch (IOException) { } }

    public static CheckpointFile Load(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: checkpoint not found");
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        long fileLength = fs.Length;
        var head = new byte[16];
        if (fileLength < head.Length + FooterLength || fs.Read(head) != head.Length || !head.AsSpan(0, 8).SequenceEqual(Magic))
            throw new CheckpointException($"{path}: not an OrtFinetune checkpoint (bad magic)");
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(head.AsSpan(8));
        if (headerLength <= 0 || headerLength > MaxHeader || 16 + headerLength > fileLength - FooterLength)
            throw new CheckpointException($"{path}: corrupt checkpoint (header length {headerLength})");
        var hb = new byte[headerLength];
        fs.ReadExactly(hb);
        JsonNode? header;
        try { header = JsonNode.Parse(hb); }
        catch (JsonException e) { throw new CheckpointException($"{path}: corrupt checkpoint header ({e.Message})", e); }
        int format;
        try { format = header?["format"]?.GetValue<int>() ?? -1; }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw new CheckpointException($"{path}: corrupt checkpoint header ({e.Message})", e); }
        if (format == 1)
            throw new CheckpointException($"{path}: checkpoint format version 1 (written before checkpoints carried a checksum) is not supported; this build reads version {FormatVersion}: resume it with the build that wrote it, or start the run again");
        if (format != FormatVersion)
            throw new CheckpointException($"{path}: checkpoint format version {format} is not supported (this build reads version {FormatVersion})");
        var footer = new byte[FooterLength];
        fs.Seek(fileLength - FooterLength, SeekOrigin.Begin);
        fs.ReadExactly(footer);
        if (!footer.AsSpan(8).SequenceEqual(Trailer)) throw new CheckpointException($"{path}: checkpoint is truncated (no end marker)");
        ulong stored = BinaryPrimitives.ReadUInt64LittleEndian(footer), actual = Checksum(fs, fileLength - FooterLength);
        if (stored != actual)
            throw new CheckpointException($"{path}: checkpoint is corrupt (checksum {actual:x16} does not match the stored {stored:x16}); the file was damaged after it was written");
        long dataStart = (16 + headerLength + Align - 1) / Align * Align;
        var ck = new CheckpointFile();
        try
        {
            if (header!["meta"] is JsonObject meta)
                foreach (var (k, v) in meta) ck.Meta[k] = v?.GetValue<string>() ?? "";
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new CheckpointException($"{path}: corrupt checkpoint metadata ({e.Message})", e);
        }
        long dataEnd = fileLength - FooterLength;
        try
        {
            foreach (var e in header["tensors"]!.AsArray())
            {
                var name = e!["name"]!.GetValue<string>();
                var type = (DataType)e["dtype"]!.GetValue<int>();
                var dims = e["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                long off = e["offset"]!.GetValue<long>(), len = e["length"]!.GetValue<long>();
                long count = 1;
                foreach (var d in dims) { if (d < 0 || (d > 0 && count > ModelIO.MaxElements / d)) throw new CheckpointException($"{path}: tensor '{name}' has invalid shape"); count *= d; }
                if (type.SizeOf() == 0 || len != count * type.SizeOf() || len > int.MaxValue)
                    throw new CheckpointException($"{path}: tensor '{name}' has {len} bytes for {type}[{string.Join(",", dims)}]");
                if (off < 0 || dataStart + off + len > dataEnd)
                    throw new CheckpointException($"{path}: tensor '{name}' lies outside the file (checkpoint truncated or corrupt)");
                var buf = new byte[len];
                fs.Seek(dataStart + off, SeekOrigin.Begin);
                fs.ReadExactly(buf);
                ck.Tensors.Add(new Tensor(name, type, dims, buf));
            }
        }
        catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException or JsonException or OnnxFormatException)
        {
            throw new CheckpointException($"{path}: corrupt checkpoint tensor table ({e.Message})", e);
        }
        return ck;
    }

    /// <summary>XxHash64 of the first <paramref name="length"/> bytes of the file.</summary>
    static ulong Checksum(FileStream fs, long length)
    {
        var hash = new XxHash64();
        var buf = new byte[1 << 20];
        fs.Seek(0, SeekOrigin.Begin);
        for (long left = length; left > 0;)
        {
            int n = (int)Math.Min(buf.Length, left);
            fs.ReadExactly(buf, 0, n);
            hash.Append(buf.AsSpan(0, n));
            left -= n;
        }
        return hash.GetCurrentHashAsUInt64();
    }
}

/// <summary>A checkpoint cannot be read or written; the message names the file and the problem.</summary>
public sealed class CheckpointException : Exception
{
    public CheckpointException(string message, Exception? inner = null) : base(message, inner) { }
}
