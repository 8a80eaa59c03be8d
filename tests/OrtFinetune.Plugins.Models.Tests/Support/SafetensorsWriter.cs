using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace OrtFinetune.Plugins.Models.Tests.Support;

/// <summary>Writes safetensors files for tests (contiguous, in the given order).</summary>
public static class SafetensorsWriter
{
    public sealed record Item(string Name, string DType, long[] Shape, byte[] Data);

    public static byte[] Build(IEnumerable<Item> items, Dictionary<string, string>? metadata = null)
    {
        var header = new Dictionary<string, object>();
        long offset = 0;
        var blobs = new List<byte[]>();
        foreach (var it in items)
        {
            header[it.Name] = new Dictionary<string, object> { ["dtype"] = it.DType, ["shape"] = it.Shape, ["data_offsets"] = new[] { offset, offset + it.Data.Length } };
            offset += it.Data.Length;
            blobs.Add(it.Data);
        }
        if (metadata != null) header["__metadata__"] = metadata;
        return Assemble(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header)), blobs.SelectMany(b => b).ToArray());
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
}
