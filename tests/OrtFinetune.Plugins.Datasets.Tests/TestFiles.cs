using System.Buffers.Binary;
using System.IO.Compression;
using Microsoft.Extensions.Logging;

namespace OrtFinetune.Plugins.Datasets.Tests;

/// <summary>A temporary folder deleted on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() { Path = Directory.CreateTempSubdirectory("ortft-ds-").FullName; }
    public string Path { get; }
    public string this[string name] => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}

public static class Idx
{
    public static byte[] Images(int count, int rows, int cols, Func<int, int, byte>? pixel = null)
    {
        var b = new byte[16 + count * rows * cols];
        BinaryPrimitives.WriteUInt32BigEndian(b, 0x00000803);
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4), count);
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(8), rows);
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(12), cols);
        for (int i = 0; i < count; i++)
            for (int p = 0; p < rows * cols; p++) b[16 + i * rows * cols + p] = pixel?.Invoke(i, p) ?? (byte)(i * 7 + p);
        return b;
    }

    public static byte[] Labels(int count, Func<int, byte>? label = null)
    {
        var b = new byte[8 + count];
        BinaryPrimitives.WriteUInt32BigEndian(b, 0x00000801);
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4), count);
        for (int i = 0; i < count; i++) b[8 + i] = label?.Invoke(i) ?? (byte)(i % 10);
        return b;
    }

    public static byte[] Gzip(byte[] data)
    {
        var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true)) gz.Write(data);
        return ms.ToArray();
    }

    /// <summary>Writes a complete MNIST-style folder: train (trainCount) and t10k (testCount), 4x3 images.</summary>
    public static void WriteSet(string dir, int trainCount = 20, int testCount = 10, bool gzip = false)
    {
        void W(string name, byte[] data) => File.WriteAllBytes(System.IO.Path.Combine(dir, name + (gzip ? ".gz" : "")), gzip ? Gzip(data) : data);
        W("train-images-idx3-ubyte", Images(trainCount, 4, 3));
        W("train-labels-idx1-ubyte", Labels(trainCount));
        W("t10k-images-idx3-ubyte", Images(testCount, 4, 3, (i, p) => (byte)(200 - i - p)));
        W("t10k-labels-idx1-ubyte", Labels(testCount, i => (byte)(9 - i % 10)));
    }
}

public static class Cifar
{
    /// <summary>count records; pixel (r, c, y, x) = f(record, channel, y, x).</summary>
    public static byte[] Batch(int count, Func<int, byte>? label = null, Func<int, int, int, byte>? pixel = null)
    {
        var b = new byte[count * 3073];
        for (int r = 0; r < count; r++)
        {
            b[r * 3073] = label?.Invoke(r) ?? (byte)(r % 10);
            for (int c = 0; c < 3; c++)
                for (int p = 0; p < 1024; p++)
                    b[r * 3073 + 1 + c * 1024 + p] = pixel?.Invoke(r, c, p) ?? (byte)(r * 31 + c * 80 + p);
        }
        return b;
    }
}

/// <summary>Collects log messages.</summary>
public sealed class ListLogger : ILogger
{
    public List<string> Messages { get; } = new();
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (Messages) Messages.Add($"{logLevel}: {formatter(state, exception)}");
    }
}
