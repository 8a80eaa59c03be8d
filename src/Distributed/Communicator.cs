using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using OrtFinetune.Onnx;

namespace OrtFinetune.Distributed;

/// <summary>
/// The ranks of a data-parallel run (MPI_COMM_WORLD of Open MPI): rank and size, in-place sums of
/// gradient buckets in host memory, broadcast, barrier. One per process, created by
/// <see cref="FromEnvironment(ILogger?)"/> when the process was launched as one of several ranks
/// (<c>mpirun -n 2 ortfinetune train ...</c>); single-process runs get null and never load libmpi.
/// </summary>
/// <remarks>
/// <para>Every operation is collective: all ranks call it, in the same order, with the same counts
/// and types. Calls are serialized by a lock, so any thread may make them (MPI is initialized with
/// <c>MPI_THREAD_SERIALIZED</c>), but collectives from two threads at once would still be a protocol
/// error between ranks and must not happen.</para>
/// <para>Errors: MPI_COMM_WORLD's handler is set to <c>MPI_ERRORS_RETURN</c>, and every return code
/// is checked; a failure throws <see cref="DistributedException"/> naming the call and code. A rank
/// that dies (crash, <c>exit</c>) ends the whole job: mpirun sees a rank leave without
/// <c>MPI_Finalize</c> and kills the others.</para>
/// <para>Shutdown: <see cref="Dispose"/> calls <c>MPI_Finalize</c>, which waits for every rank. On a
/// failure path where the other ranks may still be waiting in a collective (an exception on this rank
/// only), call <see cref="Abort"/> instead; finalizing there would hang until mpirun's own cleanup.
/// After a failed MPI call, or during an unhandled exception, <see cref="Dispose"/> skips
/// <c>MPI_Finalize</c> (the ranks are out of step), and mpirun reports the job as failed.</para>
/// </remarks>
public sealed unsafe class Communicator : IDisposable
{
    readonly MpiLibrary _mpi;
    readonly ILogger _log;
    readonly object _gate = new();
    readonly bool _ownsInit;
    IntPtr _float16Sum, _bfloat16Sum;
    bool _disposed, _aborted, _failed;
    volatile bool _crashing;

    /// <summary>This process's rank, 0 to <see cref="Size"/> - 1.</summary>
    public int Rank { get; }

    /// <summary>The number of ranks.</summary>
    public int Size { get; }

    /// <summary>This process's rank among the ranks on its node (to pick a GPU).</summary>
    public int LocalRank { get; }

    /// <summary>One line for the log, e.g. "Open MPI v4.1.4, rank 0 of 2, host memory".</summary>
    public string Description { get; }

    /// <summary><c>MPI_Get_library_version</c>'s full text.</summary>
    public string LibraryVersion { get; }

    /// <summary>Rank 0: the one that writes files and prints.</summary>
    public bool IsRoot => Rank == 0;

    /// <summary>The most elements one MPI call moves: MPI counts are <c>int</c>, so longer buffers go
    /// in chunks. Lowered by tests to exercise the chunking.</summary>
    internal int ChunkElements { get; set; } = int.MaxValue;

    /// <summary>
    /// The communicator of this run, or null when the process was not launched as one of several
    /// ranks (no <c>OMPI_COMM_WORLD_*</c>, <c>PMI_*</c> or <c>PMIX_RANK</c> variables, or a size of 1);
    /// in that case libmpi is not loaded. See <see cref="LaunchInfo.FromEnvironment()"/>.
    /// </summary>
    /// <exception cref="DistributedException">The environment says several ranks but libmpi cannot be
    /// loaded (the message names the package to install) or initialized.</exception>
    public static Communicator? FromEnvironment(ILogger? log = null) =>
        FromEnvironment(log, Environment.GetEnvironmentVariable, MpiLibrary.DefaultNames);

    internal static Communicator? FromEnvironment(ILogger? log, Func<string, string?> env, IReadOnlyList<string> libraryNames)
    {
        var launch = LaunchInfo.FromEnvironment(env);
        if (launch == null || launch.Size <= 1) return null;
        return new Communicator(MpiLibrary.Load(libraryNames), launch, log ?? NullLogger.Instance);
    }

    Communicator(MpiLibrary mpi, LaunchInfo launch, ILogger log)
    {
        _mpi = mpi;
        _log = log;
        int flag = 0;
        Check("MPI_Finalized", _mpi.Finalized(&flag));
        if (flag != 0) throw new DistributedException("MPI was already finalized in this process; it cannot be initialized again.");
        Check("MPI_Initialized", _mpi.Initialized(&flag));
        string threads = "";
        if (flag == 0)
        {
            int provided = 0;
            Check("MPI_Init_thread", _mpi.Init_thread(null, null, MpiLibrary.ThreadSerialized, &provided));
            _ownsInit = true;
            threads = provided switch
            {
                >= MpiLibrary.ThreadSerialized => "",
                MpiLibrary.ThreadFunneled => " (MPI_THREAD_FUNNELED only: call from the thread that created the communicator)",
                _ => throw new DistributedException(
                    $"MPI_Init_thread provided thread level {provided}; at least MPI_THREAD_FUNNELED is needed (a .NET process has many threads)."),
            };
        }
        Check("MPI_Comm_set_errhandler", _mpi.Comm_set_errhandler(_mpi.CommWorld, _mpi.ErrorsReturn));
        int rank = 0, size = 0;
        Check("MPI_Comm_rank", _mpi.Comm_rank(_mpi.CommWorld, &rank));
        Check("MPI_Comm_size", _mpi.Comm_size(_mpi.CommWorld, &size));
        Rank = rank;
        Size = size;
        if (size != launch.Size || rank != launch.Rank)
        {
            _failed = true;
            throw new DistributedException(
                $"{launch.Source}'s environment says rank {launch.Rank} of {launch.Size}, but MPI_COMM_WORLD has rank {rank} of {size}: " +
                "was the process started by a different launcher than the library it loaded?");
        }
        LocalRank = launch.LocalRank ?? NodeRank();
        AppDomain.CurrentDomain.UnhandledException += OnUnhandledException;

        IntPtr op;
        Check("MPI_Op_create", _mpi.Op_create(SixteenBitSum.Float16Pointer, 1, &op));
        _float16Sum = op;
        Check("MPI_Op_create", _mpi.Op_create(SixteenBitSum.BFloat16Pointer, 1, &op));
        _bfloat16Sum = op;

        var version = stackalloc byte[MpiLibrary.MaxStringLength];
        int length = 0;
        Check("MPI_Get_library_version", _mpi.Get_library_version(version, &length));
        LibraryVersion = Marshal.PtrToStringUTF8((IntPtr)version, Math.Clamp(length, 0, MpiLibrary.MaxStringLength)).TrimEnd('\0', '\n', ' ');
        var name = LibraryVersion.Split(',')[0].Trim();
        Description = $"{(name.Length > 0 ? name : "MPI")}, rank {Rank} of {Size}, host memory";
        _log.Log(IsRoot ? LogLevel.Information : LogLevel.Debug,
            "Data parallel: {Description}, local rank {LocalRank}, launched by {Source} ({Library}){Threads}",
            Description, LocalRank, launch.Source, _mpi.Path, threads);
    }

    /// <summary>
    /// An exception nobody catches ends this process, but .NET still runs the <c>finally</c> blocks
    /// (a <c>using</c> around the communicator) on the way out: <c>MPI_Finalize</c> there would wait
    /// forever for ranks blocked in a collective this rank will never join. Marked here, Dispose skips
    /// it; the process then dies as .NET dies of an unhandled exception, and mpirun ends the job.
    /// </summary>
    void OnUnhandledException(object? sender, UnhandledExceptionEventArgs e) => _crashing = true;

    /// <summary>Rank on this node from MPI itself, when the launcher did not say (MPI_Comm_split_type
    /// with MPI_COMM_TYPE_SHARED: the ranks that share memory with this one).</summary>
    internal int NodeRank()
    {
        IntPtr node;
        int rank = 0;
        Check("MPI_Comm_split_type", _mpi.Comm_split_type(_mpi.CommWorld, MpiLibrary.CommTypeShared, Rank, _mpi.InfoNull, &node));
        try { Check("MPI_Comm_rank", _mpi.Comm_rank(node, &rank)); }
        finally { Check("MPI_Comm_free", _mpi.Comm_free(&node)); }
        return rank;
    }

    /// <summary>
    /// The mean over all ranks, in place, as torch DDP computes it: each rank first divides its values by
    /// <see cref="Size"/>, then they are summed (<see cref="AllReduceSum(IntPtr, long, DataType)"/>). Dividing
    /// first keeps a 16-bit sum from overflowing where the mean would not; for a power-of-two world the
    /// division is exact in every float type (bar subnormals).
    /// </summary>
    public void AllReduceMean(IntPtr data, long count, DataType type)
    {
        if (Size > 1) Scale(data, count, type, 1.0 / Size);
        AllReduceSum(data, count, type);
    }

    static void Multiply<T>(Span<T> x, T factor) where T : unmanaged, System.Numerics.INumber<T>
    {
        var vectors = System.Runtime.InteropServices.MemoryMarshal.Cast<T, System.Numerics.Vector<T>>(x);
        for (int i = 0; i < vectors.Length; i++) vectors[i] *= factor;
        for (int i = vectors.Length * System.Numerics.Vector<T>.Count; i < x.Length; i++) x[i] *= factor;
    }

    static void Scale(IntPtr data, long count, DataType type, double factor)
    {
        const long Chunk = 1 << 28;
        for (long at = 0; at < count; at += Chunk)
        {
            int n = (int)Math.Min(Chunk, count - at);
            switch (type)
            {
                case DataType.Float:
                    Multiply(new Span<float>((float*)data + at, n), (float)factor);
                    break;
                case DataType.Double:
                    Multiply(new Span<double>((double*)data + at, n), factor);
                    break;
                case DataType.Float16:
                    var h = new Span<ushort>((ushort*)data + at, n);
                    for (int i = 0; i < h.Length; i++) h[i] = SixteenBitSum.ToFloat16((float)(SixteenBitSum.FromFloat16(h[i]) * factor));
                    break;
                case DataType.BFloat16:
                    var b = new Span<ushort>((ushort*)data + at, n);
                    for (int i = 0; i < b.Length; i++) b[i] = SixteenBitSum.ToBFloat16((float)(SixteenBitSum.FromBFloat16(b[i]) * factor));
                    break;
                default:
                    throw new DistributedException($"AllReduceMean supports float, double, float16 and bfloat16, not {type.OnnxName()}.");
            }
        }
    }

    /// <summary>
    /// Sums <paramref name="count"/> elements at <paramref name="data"/> (host memory) over all ranks,
    /// in place: afterwards every rank holds the same sum. Float, Double and Int64 use MPI's own sum;
    /// Float16 and BFloat16 a user op that adds in fp32 and rounds to nearest even (NaN and infinities
    /// propagate). Buffers longer than <c>int.MaxValue</c> elements go in several calls.
    /// </summary>
    /// <exception cref="DistributedException">Another element type, or an MPI error.</exception>
    public void AllReduceSum(IntPtr data, long count, DataType type)
    {
        var (datatype, op) = type switch
        {
            DataType.Float => (_mpi.Float, _mpi.OpSum),
            DataType.Double => (_mpi.Double, _mpi.OpSum),
            DataType.Int64 => (_mpi.Int64, _mpi.OpSum),
            DataType.Float16 => (_mpi.UInt16, _float16Sum),
            DataType.BFloat16 => (_mpi.UInt16, _bfloat16Sum),
            _ => throw new DistributedException($"AllReduceSum supports float, double, int64, float16 and bfloat16, not {type.OnnxName()}."),
        };
        AllReduce(data, count, type.SizeOf(), datatype, op);
    }

    /// <summary>Sums the values over all ranks, in place.</summary>
    public void AllReduceSum(Span<double> values)
    {
        fixed (double* p = values) AllReduceSum((IntPtr)p, values.Length, DataType.Double);
    }

    /// <summary>Sums the values over all ranks, in place.</summary>
    public void AllReduceSum(Span<long> values)
    {
        fixed (long* p = values) AllReduceSum((IntPtr)p, values.Length, DataType.Int64);
    }

    /// <summary>The largest of the ranks' values (e.g. "does any rank want to stop?").</summary>
    public long AllReduceMax(long value)
    {
        AllReduce((IntPtr)(&value), 1, sizeof(long), _mpi.Int64, _mpi.OpMax);
        return value;
    }

    /// <summary>The smallest of the ranks' values (e.g. "do all ranks agree?", with <see cref="AllReduceMax"/>).</summary>
    public long AllReduceMin(long value)
    {
        AllReduce((IntPtr)(&value), 1, sizeof(long), _mpi.Int64, _mpi.OpMin);
        return value;
    }

    void AllReduce(IntPtr data, long count, int elementSize, IntPtr datatype, IntPtr op)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (count == 0) return;
        if (data == IntPtr.Zero) throw new ArgumentNullException(nameof(data));
        lock (_gate)
        {
            ThrowIfUnusable();
            for (long done = 0; done < count;)
            {
                int n = (int)Math.Min(ChunkElements, count - done);
                Check("MPI_Allreduce", _mpi.Allreduce(MpiLibrary.InPlace, (byte*)data + done * elementSize, n, datatype, op, _mpi.CommWorld));
                done += n;
            }
        }
    }

    /// <summary>Copies <paramref name="bytes"/> bytes at <paramref name="data"/> from rank
    /// <paramref name="root"/> to every other rank (in chunks of at most <c>int.MaxValue</c> bytes).</summary>
    public void Broadcast(IntPtr data, long bytes, int root)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        if ((uint)root >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(root), root, $"not a rank of {Size}");
        if (bytes == 0) return;
        if (data == IntPtr.Zero) throw new ArgumentNullException(nameof(data));
        lock (_gate)
        {
            ThrowIfUnusable();
            for (long done = 0; done < bytes;)
            {
                int n = (int)Math.Min(ChunkElements, bytes - done);
                Check("MPI_Bcast", _mpi.Bcast((byte*)data + done, n, _mpi.Byte, root, _mpi.CommWorld));
                done += n;
            }
        }
    }

    /// <summary>Copies rank <paramref name="root"/>'s bytes to every other rank; all ranks pass spans of the same length.</summary>
    public void Broadcast(Span<byte> data, int root = 0)
    {
        fixed (byte* p = data) Broadcast((IntPtr)p, data.Length, root);
    }

    /// <summary>Returns once every rank has called it.</summary>
    public void Barrier()
    {
        lock (_gate)
        {
            ThrowIfUnusable();
            Check("MPI_Barrier", _mpi.Barrier(_mpi.CommWorld));
        }
    }

    /// <summary>
    /// Ends every rank of the job now with exit code <paramref name="code"/> (<c>MPI_Abort</c>): the way
    /// out of a failure on one rank while others may wait in a collective. Does not return.
    /// </summary>
    [DoesNotReturn]
    public void Abort(int code)
    {
        // No lock: another thread may be blocked in a collective while holding it.
        bool usable = !_disposed && !_aborted;
        _aborted = true;
        if (usable)
        {
            _log.LogError("Aborting all {Size} ranks with exit code {Code} (from rank {Rank})", Size, code, Rank);
            _mpi.Abort(_mpi.CommWorld, code);
        }
        Environment.Exit(code);   // MPI_Abort returned (it should not), or MPI is already finalized
    }

    /// <summary>
    /// Frees the 16-bit ops and calls <c>MPI_Finalize</c> (collective: every rank must reach it), once.
    /// Not after <see cref="Abort"/>, not after a failed MPI call and not while an unhandled exception ends
    /// the process (then mpirun ends the job). On a handled failure of this rank alone, call
    /// <see cref="Abort"/> instead: finalizing would wait for ranks that wait for this one. Errors are
    /// logged, not thrown.
    /// </summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed || _aborted) return;
            _disposed = true;
            AppDomain.CurrentDomain.UnhandledException -= OnUnhandledException;
            if (_failed || _crashing)
            {
                _log.LogWarning("Rank {Rank} is failing ({Reason}): not finalizing MPI, so mpirun ends the job", Rank,
                    _failed ? "an MPI call failed" : "unhandled exception");
                return;
            }
            try
            {
                if (_float16Sum != IntPtr.Zero) { var op = _float16Sum; Check("MPI_Op_free", _mpi.Op_free(&op)); _float16Sum = IntPtr.Zero; }
                if (_bfloat16Sum != IntPtr.Zero) { var op = _bfloat16Sum; Check("MPI_Op_free", _mpi.Op_free(&op)); _bfloat16Sum = IntPtr.Zero; }
                if (_ownsInit) Check("MPI_Finalize", _mpi.Finalize());
            }
            catch (DistributedException e)
            {
                _log.LogWarning("{Message}", e.Message);
            }
        }
    }

    void ThrowIfUnusable()
    {
        ObjectDisposedException.ThrowIf(_disposed || _aborted, this);
        if (_failed) throw new DistributedException("An earlier MPI call failed on this rank; the ranks are out of step and the communicator cannot be used.");
    }

    void Check(string call, int code)
    {
        if (code == MpiLibrary.Success) return;
        _failed = true;
        throw new DistributedException(call, code,
            $"{call} failed with MPI error {code} ({_mpi.ErrorText(code)}) on rank {Rank} of {Size}.");
    }
}
