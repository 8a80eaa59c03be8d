using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Models;

/// <summary>
/// Writes safetensors files (the counterpart of <see cref="SafetensorsReader"/>): the 8-byte header length,
/// the JSON header padded with spaces to 8 bytes as the reference writer does, then the tensors contiguous
/// in the given order.
/// </summary>
public static class SafetensorsWriter
{
    public sealed record Item(string Name, string DType, long[] Shape, byte[] Data);

    public static byte[] Build(IEnumerable<Item> items, Dictionary<string, string>? metadata = null)
    {
        var (header, blobs) = Header(items, metadata);
        return Assemble(header, blobs.SelectMany(b => b).ToArray());
    }

    /// <summary>Writes the file (through a temporary file, so a failed write leaves no partial file); errors name the path.</summary>
    public static void Write(string path, IEnumerable<Item> items, Dictionary<string, string>? metadata = null)
    {
        var (header, blobs) = Header(items, metadata);
        var tmp = path + ".tmp";
        try
        {
            var dir = Path.GetDirectoryName(Path.GetFullPath(path));
            if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
                fs.Write(len);
                fs.Write(header);
                foreach (var b in blobs) fs.Write(b);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw new ModelException($"{path}: cannot write safetensors file: {e.Message}", e);
        }
    }

    static (byte[] Header, List<byte[]> Blobs) Header(IEnumerable<Item> items, Dictionary<string, string>? metadata)
    {
        var header = new Dictionary<string, object>();
        if (metadata != null) header["__metadata__"] = metadata;
        long offset = 0;
        var blobs = new List<byte[]>();
        foreach (var it in items)
        {
            header[it.Name] = new Dictionary<string, object> { ["dtype"] = it.DType, ["shape"] = it.Shape, ["data_offsets"] = new[] { offset, offset + it.Data.Length } };
            offset += it.Data.Length;
            blobs.Add(it.Data);
        }
        var json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int pad = (8 - json.Length % 8) % 8;
        if (pad > 0) json = [.. json, .. Enumerable.Repeat((byte)' ', pad)];
        return (json, blobs);
    }

    public static byte[] Assemble(byte[] headerJson, byte[] data)
    {
        var r = new byte[8 + headerJson.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(r, (ulong)headerJson.Length);
        headerJson.CopyTo(r, 8);
        data.CopyTo(r, 8 + headerJson.Length);
        return r;
    }

    public static byte[] F32(params float[] v)
    {
        var b = new byte[v.Length * 4];
        for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(4 * i), v[i]);
        return b;
    }

    public static byte[] F16(params float[] v)
    {
        var b = new byte[v.Length * 2];
        for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(b.AsSpan(2 * i), (Half)v[i]);
        return b;
    }
}
